"""The deep probe of diagonal linear recurrences (LRU, minGRU, RG-LRU, Mamba ...): exact, from their decays.

A layer with an adapter (:mod:`gradprobe.recurrence_adapter`) is measured from
the decays ``a_t`` of its latest call on a deep step, computed by the adapter
from the live parameters and the captured inputs. Since the per-step Jacobian
is ``diag(a_t)``, everything follows exactly (:mod:`gradprobe.recorders.diagonal`):

- a ``deep`` event like any other layer's (``profile_kind: "state"``): the
  profile ``||dh_T/dh_(T-k)||`` (largest over channels and batch rows), the
  per-step Jacobian norm ``max |a_t|``, the Lyapunov exponents (for a diagonal
  system, each channel's mean ``ln|a_t|``), ``||dL/dy_t||`` from the gradient
  of the layer's output, and the horizon at ``epsilon`` (the classic reading,
  ``ln(1/epsilon)`` e-folds);
- a ``recurrence`` event with what only a linear recurrence has: the decay
  range, the per-channel time constants ``tau = -1/mean ln|a|`` (percentiles),
  the e-fold horizon, the cumulative decay over the sequence, the sensitivity
  near ``|a| -> 1`` and the count of non-finite decays (written on steps with
  non-finite values too: a collapsing or exploding decay is what such a step
  needs explained). Resets (``a_t = 0`` exactly, where a document starts) cut
  the profile but are left out of the per-channel means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradprobe.discovery import RecurrentSite
from gradprobe.faults import short, warn
from gradprobe.quantities.base import LayerProfile, Quantity, QuantitySetup, StepContext
from gradprobe.recorders import diagonal, propagation
from gradprobe.recorders.capture import DEEP
from gradprobe.recorders.sequence_replay import SequenceCall, step_norms

#: The percentiles of the per-channel time constants a ``recurrence`` event carries.
PERCENTILES = tuple(range(0, 101, 10))


def sensitivity(decay: float) -> float:
    """``sqrt(1 + r^2) / (1 - r^2)^1.5``: the root-mean-square of ``dh_t/d lambda`` for a channel with
    ``|lambda| = r`` driven by unit white noise (``h_t = sum_k lambda^k x_(t-k)``, so ``E|dh/d lambda|^2 =
    sum_k k^2 r^(2k-2)``); it grows faster than the state itself (``1/sqrt(1 - r^2)``) as ``r -> 1``
    (Zucchet & Orvieto 2024); ``inf`` at ``r >= 1``."""
    if not decay < 1.0:
        return math.inf
    r2 = decay * decay
    return float(math.sqrt(1 + r2) / (1 - r2) ** 1.5)


@dataclass
class Decays:
    """One call's decays, read once: magnitudes and their logs in float64 (``[B, T, N]``)."""

    magnitude: Tensor
    logs: Tensor  # ln|a_t|: -inf at a reset, nan where a_t is not finite
    per_channel: Tensor  # mean ln|a_t| per channel over rows and steps, resets and non-finite decays left out

    @classmethod
    def of(cls, transition: Tensor) -> Decays:
        """Read the decays ``a_t`` (real or complex) of one call."""
        magnitude = transition.detach().abs().to(torch.float64)
        logs = torch.where(torch.isfinite(magnitude), torch.log(magnitude), torch.full_like(magnitude, math.nan))
        kept = torch.where(torch.isinf(logs), torch.full_like(logs, math.nan), logs)  # resets out of the means
        return cls(magnitude, logs, torch.nanmean(kept.reshape(-1, kept.shape[-1]), dim=0))


def decay_fields(transition: Tensor | Decays) -> dict[str, Any]:
    """The ``recurrence`` event's numbers from one call's decays ``a_t`` (``[B, T, N]``, real or complex).

    Resets (``a_t = 0`` exactly: a document start, where the state is set, not decayed) and non-finite decays
    are left out of the per-channel means."""
    decays = transition if isinstance(transition, Decays) else Decays.of(transition)
    magnitude = decays.magnitude
    finite = torch.isfinite(magnitude)
    known = decays.per_channel[~torch.isnan(decays.per_channel)]
    fields: dict[str, Any] = {
        "seq_len": int(magnitude.shape[-2]),
        "channels": int(magnitude.shape[-1]),
        "nonfinite": int((~finite).sum()),
    }
    if known.numel() == 0:
        return fields
    taus = torch.where(known < 0, -1 / known, torch.full_like(known, math.inf))
    positive = magnitude[finite & (magnitude > 0)]
    top = float(known.max())
    fields.update(
        decay_min=float(positive.min()),
        decay_max=float(positive.max()),
        top_decay=math.exp(top),
        time_constants=_percentiles(taus),
        sensitivity=sensitivity(math.exp(top)),
    )
    return fields


def _percentiles(values: Tensor) -> list[float]:
    ordered = torch.sort(values).values
    last = ordered.numel() - 1
    out = []
    for p in PERCENTILES:  # nearest-rank interpolation that keeps inf (torch.quantile turns inf - inf into nan)
        position = p / 100 * last
        low, high = math.floor(position), math.ceil(position)
        a, b = float(ordered[low]), float(ordered[high])
        out.append(a if low == high or a == b else a + (b - a) * (position - low))
    return out


def first_rows(args: tuple[Any, ...], kwargs: dict[str, Any], rows: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments cut to its first ``rows`` batch rows: every tensor whose first dimension is the batch
    of the first argument (the rows of a diagonal recurrence do not mix)."""
    first = args[0] if args else None
    if not isinstance(first, Tensor) or first.dim() == 0 or rows <= 0 or first.shape[0] <= rows:
        return args, kwargs
    batch = first.shape[0]

    def cut(value: Any) -> Any:
        return value[:rows] if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch else value

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


class RecurrenceSpectra(Quantity):
    """On deep steps: the exact measurement of every layer an adapter reads (see the module docstring).

    It reads the setup's ``settings.epsilon``, ``settings.lyapunov_k`` and ``settings.deep_rows`` (the batch rows
    whose decays it reads), and keeps its profiles in the shared ``setup.profiles``.
    """

    modes = frozenset({DEEP})
    on_nonfinite_steps = True

    def __init__(self, setup: QuantitySetup) -> None:
        self.sites = [site for site in setup.sites if site.adapter is not None]
        self.settings = setup.settings
        self.paused = setup.paused
        self.layers = setup.profiles
        self.failures = setup.failures

    def compute(self, context: StepContext) -> None:
        """Read the decays of each adapted layer's latest sequence-level call and emit its events."""
        for site in self.sites:
            calls = context.record.cell_calls.get(site.name)
            call = calls.whole_sequence if calls is not None else None
            if call is None or site.adapter is None:
                continue
            try:
                transition = self._transition(site, call)
            except Exception as exc:  # noqa: BLE001 - an adapter (a plugin's code) fails alone: its layer is not measured
                self._switch_off(context, site, exc)
                continue
            decays = Decays.of(transition)
            fields = decay_fields(decays)
            finite = fields["nonfinite"] == 0
            profile = diagonal.profile_of_logs(decays.logs) if finite else []
            if finite:
                fields["efold_horizon"] = diagonal.horizon(profile)
                fields["cumulative"] = profile[-1]
            context.emit("recurrence", step=context.step, layer=site.name, recurrence=site.adapter.kind, **fields)
            grad_norms = self._grad_norms(call.output_grad, context.grad_scale)
            if not finite or not all(math.isfinite(v) for v in grad_norms):
                continue  # a step with non-finite values: the recurrence event says what the decays did
            self._emit_deep(context, site.name, decays, profile, grad_norms)

    def _transition(self, site: RecurrentSite, call: SequenceCall) -> Tensor:
        """The adapter's decays for the call's first ``deep_rows`` rows, checked to be ``[batch, time, channels]``."""
        assert site.adapter is not None
        args, kwargs = first_rows(call.args, call.kwargs, int(self.settings.deep_rows))
        with self.paused(), torch.no_grad():
            transition = site.adapter.transition(site.module, args, kwargs)
        if not isinstance(transition, Tensor) or transition.dim() != 3:
            shape = tuple(transition.shape) if isinstance(transition, Tensor) else type(transition).__name__
            raise TypeError(f"it returned {shape}, not decays of shape [batch, time, channels]")
        return transition

    def _switch_off(self, context: StepContext, site: RecurrentSite, exc: Exception) -> None:
        """Stop measuring a layer whose adapter failed, once, with the reason (its layer is reported not measured)."""
        assert site.adapter is not None
        reason = f"its {site.adapter.kind!r} recurrence adapter failed: {short(exc)}"
        self.failures[site.name] = reason
        self.layers.pop(site.name, None)  # what it measured before is no verdict on it now
        self.sites = [s for s in self.sites if s is not site]
        warn(f"gradprobe stopped measuring {site.name}: {reason}", stacklevel=2)
        context.emit("fault", step=context.step, part=f"the recurrence adapter of {site.name}", message=short(exc))

    def _emit_deep(
        self, context: StepContext, name: str, decays: Decays, profile: list[float], grad_norms: list[float]
    ) -> None:
        s = self.settings
        rate, horizon = propagation.fit_decay(profile, s.epsilon)
        jacobian_norms = torch.exp(decays.logs.amax(dim=-1).amax(dim=0)).tolist()  # ||diag(a_t)|| = max |a_t|
        exponents = decays.per_channel[~torch.isnan(decays.per_channel)]
        lyapunov = torch.sort(exponents, descending=True).values[: max(int(s.lyapunov_k), 0)].tolist()
        event = {
            "step": context.step,
            "layer": name,
            "module": name,
            "mode": None,
            "seq_len": len(profile),
            "batch": int(decays.magnitude.shape[0]),
            "grad_norms": grad_norms,
            "profile": profile,
            "jacobian_norms": jacobian_norms,
            "rate": rate,
            "horizon": horizon,
            "epsilon": s.epsilon,
            "chained": True,
            "lyapunov": lyapunov,
            "profile_kind": "state",
        }
        context.emit("deep", **event)
        self.layers[name] = LayerProfile.from_event(event)

    @staticmethod
    def _grad_norms(output_grad: Tensor | None, grad_scale: float) -> list[float]:
        """``||dL/dy_t||`` per step from the gradient of the layer's (batch-first) output, unscaled."""
        norms = step_norms(output_grad, time_dim=1) or []
        return [v / grad_scale for v in norms] if grad_scale != 1.0 else norms

    def release(self) -> None:
        self.sites = []
