"""The cheap figures of every step: loss, gradient norms per parameter and gate, first non-finite value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradprobe.discovery import RecurrentSite
from gradprobe.faults import warn
from gradprobe.quantities.base import Quantity, QuantitySetup, StepContext
from gradprobe.recorders.capture import DEEP, OFF, SAMPLE
from gradprobe.recorders.gradients import output_sums
from gradprobe.recorders.optimizer_loop import DeferredStep, LoopStep


@dataclass(frozen=True)
class StepFigures:
    """What :class:`StepStatistics` found on one step.

    Attributes:
        gradients: The gradient record (:meth:`GradientRecorder.record`).
        nonfinite: Where non-finite values appeared first, or ``None``.
        loss: The loss as a number, or ``None``.
    """

    gradients: dict[str, Any]
    nonfinite: dict[str, Any] | None
    loss: float | None


@dataclass
class _Waiting:
    """A deferred step until its figures are read: the loop's record of it (its device tensors in
    ``loop.deferred``), and each site output's sum (non-finite exactly when the output held Inf/NaN) to place
    a non-finite step's first bad value."""

    step: int
    loop: LoopStep | None  # None: a probe.step() without optimizer hooks
    deferred: DeferredStep
    outputs: list[str]
    output_sums: Tensor | None


class StepStatistics(Quantity):
    """Records a ``step`` event after every backward pass (every step, whatever its capture mode).

    A step captured ``off`` with no fix acting on it leaves its figures on the device: under optimizer hooks when
    the loop did not change its gradients (or only clipped them with ``clip_grad_norm_``), through
    ``probe.step()`` once a gradient has been seen. Its norms, loss and output checks are read back with
    those of the steps around it in one transfer (no device synchronization on such a step), when
    :data:`DEFERRED_STEPS` are waiting, before any step read at once, and when the findings are asked for or
    the probe closes (:meth:`flush`). Their ``step`` events follow in order.

    It runs first on a step: what it finds (:attr:`latest`) tells the probe
    whether the step had non-finite values (the other quantities then have
    nothing to learn from it) and hands the per-step fixes their gradients.
    It also notices a loop that records no gradient at all (``probe.step``
    before ``backward``, or everything frozen) and warns once.
    """

    modes = frozenset({OFF, SAMPLE, DEEP})
    needs = frozenset()  # the gradients and the loss are there on every step
    on_nonfinite_steps = True

    #: Steps without any gradient, from the start, before the probe warns.
    NO_GRADIENT_STEPS = 3
    #: Deferred steps read back together.
    DEFERRED_STEPS = 32

    def __init__(self, setup: QuantitySetup) -> None:
        self._gradients = setup.gradients
        self._gradient_seen = False
        #: The latest step's gradient norm per parameter name (for "not measured" reasons).
        self.latest_params: dict[str, float] = {}
        #: What the latest step showed (``None`` while its figures wait on the device).
        self.latest: StepFigures | None = None
        self._waiting: list[_Waiting] = []
        self._emit: Any = None

    def compute(self, context: StepContext) -> None:
        """Emit the ``step`` event and keep what it found in :attr:`latest`.

        With optimizer hooks (``context.loop``) the gradients are those right
        after backward, unscaled, with what the loop did to them before the
        optimizer (``clip``); without them the gradients are read now.
        """
        observed = context.loop
        self._emit = context.emit
        if observed is not None and observed.deferred is not None:
            self._wait(context, observed, observed.deferred)
            return
        if observed is None and context.may_defer and self._gradient_seen:  # probe.step(): the same, once a
            reading = self._gradients.measure()  # gradient was seen (the missing-gradient warning comes at once)
            if reading is not None:
                loss = context.loss.detach() if isinstance(context.loss, Tensor) else context.loss  # not its graph
                self._wait(context, None, DeferredStep(reading, loss))
                return
        self.flush()
        gradients = observed.gradients if observed is not None else None
        record = gradients if gradients is not None else self._gradients.record()
        loss, loss_value = context.loss, None
        if loss is not None:
            loss_value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        loss_bad = loss_value is not None and not math.isfinite(loss_value)
        bad_forward = context.record.nonfinite_outputs() if (record["nonfinite_params"] or loss_bad) else []
        self._emit_step(context.step, record, loss_value, observed, bad_forward)

    def _wait(self, context: StepContext, observed: LoopStep | None, deferred: DeferredStep) -> None:
        outputs = context.record.outputs_seen
        # one kernel where the outputs are alike: a sum is finite exactly when every entry is
        sums = output_sums([t for _, t in outputs]) if outputs else None
        self._waiting.append(_Waiting(context.step, observed, deferred, [name for name, _ in outputs], sums))
        self.latest = None
        if len(self._waiting) >= self.DEFERRED_STEPS:
            self.flush()

    def flush(self) -> None:
        """Read the waiting steps back in one transfer and emit their ``step`` events, in order."""
        waiting, self._waiting = self._waiting, []
        if not waiting or self._emit is None:
            return
        device = waiting[0].deferred.reading.norms.device
        # the losses keep their precision (a float64 loss is not rounded to the norms' float32; MPS has no float64)
        wide = torch.float32 if device.type == "mps" else torch.float64
        parts: list[Tensor] = []
        spans: list[list[int]] = []
        for entry in waiting:
            loss = entry.deferred.loss
            pieces = [entry.deferred.reading.norms]
            if isinstance(loss, Tensor):
                pieces.append(loss.detach().reshape(1))
            if entry.output_sums is not None:
                pieces.append(entry.output_sums)
            spans.append([p.numel() for p in pieces])
            parts.extend(p.to(device, wide) for p in pieces)
        values = torch.cat(parts).tolist()  # the one host read
        offset = 0
        for entry, sizes in zip(waiting, spans):
            chunk = values[offset : offset + sum(sizes)]
            offset += sum(sizes)
            norms, rest = chunk[: sizes[0]], chunk[sizes[0] :]
            loss = entry.deferred.loss
            loss_value = float(loss) if isinstance(loss, (int, float)) else rest.pop(0) if loss is not None else None
            record, clip = entry.deferred.figures(norms, loss_value is None or math.isfinite(loss_value))
            if entry.loop is not None:
                entry.loop.clip = clip
            bad_outputs = [name for name, total in zip(entry.outputs, rest) if not math.isfinite(total)]
            self._emit_step(entry.step, record, loss_value, entry.loop, bad_outputs)

    def _emit_step(
        self,
        step: int,
        record: dict[str, Any],
        loss_value: float | None,
        observed: LoopStep | None,
        bad_outputs: list[str],
    ) -> None:
        self._watch_for_missing_gradients(step, record)
        self.latest_params = record["params"]
        nonfinite = self._place_nonfinite(record["nonfinite_params"], loss_value, bad_outputs)
        self._emit(
            "step",
            step=step,
            loss=loss_value,
            grad_norm=record["grad_norm"],
            params=record["params"],
            gates=record["gates"],
            nonfinite=nonfinite,
            **self._loop_fields(observed),
        )
        self.latest = StepFigures(record, nonfinite, loss_value)

    @staticmethod
    def _loop_fields(observed: LoopStep | None) -> dict[str, Any]:
        if observed is None:
            return {}
        fields: dict[str, Any] = {"clip": observed.clip}
        if observed.grad_scale != 1.0:
            fields["grad_scale"] = observed.grad_scale
        if observed.skipped:
            fields["skipped"] = observed.skipped
        return fields

    def got_gradients(self, site: RecurrentSite) -> bool:
        """Whether a parameter of ``site`` had a non-zero gradient on the latest step."""
        prefix = f"{site.name}." if site.name else ""
        return any(norm > 0 for name, norm in self.latest_params.items() if name.startswith(prefix))

    def release(self) -> None:
        """Drop every reference to the model's parameters (the waiting steps are read first)."""
        self.flush()
        self.latest_params = {}
        self.latest = None
        self._emit = None

    def _watch_for_missing_gradients(self, step: int, record: dict[str, Any]) -> None:
        if self._gradient_seen:
            return
        if record["grad_norm"]:
            self._gradient_seen = True
        elif step + 1 == self.NO_GRADIENT_STEPS:
            warn(
                f"gradprobe recorded no gradient in the first {self.NO_GRADIENT_STEPS} steps: call probe.step() after "
                "loss.backward() (and before optimizer.zero_grad()), and check that some parameters require grad",
                stacklevel=8,  # the user's probe.step() call
            )

    @staticmethod
    def _place_nonfinite(bad_params: list[str], loss: float | None, bad_forward: list[str]) -> dict[str, Any] | None:
        loss_bad = loss is not None and not math.isfinite(loss)
        if not (bad_params or bad_forward or loss_bad):
            return None
        where = "forward" if bad_forward else "loss" if loss_bad else "gradient"
        return {
            "where": where,
            "layer": bad_forward[0] if bad_forward else None,
            "parameter": bad_params[0] if bad_params else None,
            "parameters": bad_params[:20],
            "count": len(bad_params),
        }
