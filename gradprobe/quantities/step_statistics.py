"""The cheap figures of every step: loss, gradient norms per parameter and gate, first non-finite value."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from gradprobe.discovery import RecurrentSite
from gradprobe.faults import warn
from gradprobe.quantities.base import Quantity, QuantitySetup, StepContext
from gradprobe.recorders.capture import DEEP, OFF, SAMPLE, StepRecord
from gradprobe.recorders.optimizer_loop import LoopStep


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


class StepStatistics(Quantity):
    """Records a ``step`` event after every backward pass (every step, whatever its capture mode).

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

    def __init__(self, setup: QuantitySetup) -> None:
        self._gradients = setup.gradients
        self._gradient_seen = False
        #: The latest step's gradient norm per parameter name (for "not measured" reasons).
        self.latest_params: dict[str, float] = {}
        #: What the latest step showed.
        self.latest: StepFigures | None = None

    def compute(self, context: StepContext) -> None:
        """Emit the ``step`` event and keep what it found in :attr:`latest`.

        With optimizer hooks (``context.loop``) the gradients are those right
        after backward, unscaled, with what the loop did to them before the
        optimizer (``clip``); without them the gradients are read now.
        """
        observed = context.loop
        gradients = observed.gradients if observed is not None else None
        record = gradients if gradients is not None else self._gradients.record()
        self._watch_for_missing_gradients(context.step, record)
        self.latest_params = record["params"]
        loss, loss_value = context.loss, None
        if loss is not None:
            loss_value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        nonfinite = self._locate_nonfinite(record["nonfinite_params"], loss_value, context.record)
        context.emit(
            "step",
            step=context.step,
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
        """Drop every reference to the model's parameters."""
        self.latest_params = {}
        self.latest = None

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
    def _locate_nonfinite(bad_params: list[str], loss: float | None, captured: StepRecord) -> dict[str, Any] | None:
        loss_bad = loss is not None and not math.isfinite(loss)
        bad_forward = captured.nonfinite_outputs() if (bad_params or loss_bad) else []
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
