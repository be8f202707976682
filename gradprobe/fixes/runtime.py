"""Per-step fixes run inside ``probe.step()`` for ``fix="recommend"`` (dry run) and ``fix="auto"``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from gradprobe.fixes.clipping import ClipGradNorm, rescale
from gradprobe.fixes.nonfinite import NonFiniteGuard


class StepFixer:
    """Non-finite guard (skip the update) and clipping by norm with a threshold learned from observed norms.

    With ``mode="recommend"`` nothing is changed: every time a fix *would*
    apply, a ``fix`` event with ``applied: false`` is written. With
    ``mode="auto"`` the fix is applied and logged with ``applied: true``.
    """

    def __init__(self, model: nn.Module, mode: str, emit: Callable[..., None]) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.mode = mode
        self.emit = emit
        self.guard = NonFiniteGuard("skip")
        self.clip = ClipGradNorm()

    def after_backward(self, step: int, record: dict[str, Any], nonfinite: dict[str, Any] | None) -> None:
        apply = self.mode == "auto"
        if nonfinite is not None:
            detail = self.guard(self.params, finite=False) if apply else {"mode": "skip"}
            self.emit("fix", step=step, name=self.guard.name, applied=apply, detail=detail)
            return
        action = self.clip.decide(record["grad_norm"])
        if action is None:
            return
        if apply:
            rescale(self.params, action["scale"])
        self.emit("fix", step=step, name=self.clip.name, applied=apply, detail=action)

    def release(self) -> None:
        self.params = []
