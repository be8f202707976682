"""The cheap figures of every step: loss, gradient norms per parameter and gate, first non-finite value."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from gradprobe.discovery import RecurrentSite
from gradprobe.faults import warn
from gradprobe.quantities.base import Emit
from gradprobe.recorders.capture import StepRecord
from gradprobe.recorders.gradients import GradientRecorder
from gradprobe.recorders.optimizer_loop import LoopStep


class StepStatistics:
    """Records a ``step`` event after every backward pass.

    It also notices a loop that records no gradient at all (``probe.step``
    before ``backward``, or everything frozen) and warns once.

    Args:
        model: The model whose trainable parameters are read.
        sites: Its recurrent layers (for per-gate norms).
    """

    #: Steps without any gradient, from the start, before the probe warns.
    NO_GRADIENT_STEPS = 3

    def __init__(self, model: nn.Module, sites: list[RecurrentSite]) -> None:
        self._gradients = GradientRecorder(model, sites)
        self._gradient_seen = False
        #: The latest step's gradient norm per parameter name (for "not measured" reasons).
        self.latest_params: dict[str, float] = {}

    def read_gradients(self) -> dict[str, Any]:
        """The gradient record of the gradients as they are now."""
        return self._gradients.record()

    def record(
        self, step: int, loss: Tensor | float | None, captured: StepRecord, emit: Emit, observed: LoopStep | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None, float | None]:
        """Emit the ``step`` event; return the gradient record, where non-finite values appeared, and the loss.

        ``observed`` (optimizer hooks) brings the gradients as they were right
        after backward, unscaled, and what the loop did to them before the
        optimizer (``clip``); without it the gradients are read now.
        """
        gradients = observed.gradients if observed is not None else None
        record = gradients if gradients is not None else self._gradients.record()
        self._watch_for_missing_gradients(step, record)
        self.latest_params = record["params"]
        loss_value = None
        if loss is not None:
            loss_value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        nonfinite = self._locate_nonfinite(record["nonfinite_params"], loss_value, captured)
        emit(
            "step",
            step=step,
            loss=loss_value,
            grad_norm=record["grad_norm"],
            params=record["params"],
            gates=record["gates"],
            nonfinite=nonfinite,
            **self._loop_fields(observed),
        )
        return record, nonfinite, loss_value

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
        self._gradients.release()

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
