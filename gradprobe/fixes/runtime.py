"""Per-step fixes run inside ``probe.step()`` for ``fix="recommend"`` (dry run) and ``fix="auto"``."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from gradprobe.fixes.clipping import ClipGradNorm, parameter_norm, rescale
from gradprobe.fixes.nonfinite import NonFiniteGuard


def steps_with_the_gradient(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's update is the current gradient times a step size (plain SGD, ASGD).

    Only then does scaling the gradient down scale the step down at once:
    momentum keeps moving on the velocity it has, and adaptive optimizers
    (Adam, RMSprop, Adagrad...) divide the gradient's scale away.
    """
    if isinstance(optimizer, torch.optim.ASGD):
        return True
    return isinstance(optimizer, torch.optim.SGD) and all(not group.get("momentum") for group in optimizer.param_groups)


class StepFixer:
    """Non-finite guard (skip the update) and clipping by norm with a threshold learned from observed norms.

    With ``mode="recommend"`` nothing is changed: every time a fix *would*
    apply, a ``fix`` event with ``applied: false`` is written. With
    ``mode="auto"`` the fix is applied and logged with ``applied: true``.

    The clipper brakes a diverging loss by shrinking the gradient only while
    the optimizer stepping the model updates by the current gradient (plain
    SGD, ASGD) or is unknown (hand-written updates); with momentum or an
    adaptive optimizer a braked gradient does not brake the step, and
    measured on the exploding test zoo it made training worse. The
    optimizer is seen through PyTorch's global optimizer step hook, removed
    on :meth:`release`.
    """

    def __init__(self, model: nn.Module, mode: str, emit: Callable[..., None]) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.mode = mode
        self.emit = emit
        self.guard = NonFiniteGuard("skip")
        self.clip = ClipGradNorm()
        self.optimizer: str | None = None
        self._param_ids = {id(p) for p in self.params}
        self._seen: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._hook = register_optimizer_step_pre_hook(self._on_optimizer_step)

    def _on_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        try:
            self._see(optimizer)
        except Exception:  # noqa: BLE001 - runs inside the user's optimizer.step(): never raise there
            self.clip.brake = None  # unsure what steps the model: no brake

    def _see(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer in self._seen:
            return
        self._seen.add(optimizer)
        steps_model = any(id(p) in self._param_ids for group in optimizer.param_groups for p in group["params"])
        if not steps_model:
            return
        self.optimizer = type(optimizer).__name__
        if not steps_with_the_gradient(optimizer):
            self.clip.brake = None
        momentum = max((float(group.get("momentum") or 0.0) for group in optimizer.param_groups), default=0.0)
        if isinstance(optimizer, torch.optim.SGD) and 0 < momentum < 1:
            # momentum makes a step of up to 1 / (1 - momentum) gradients: bound the step, not only the gradient
            self.clip.ceiling = max(self.clip.headroom, self.clip.ceiling * (1 - momentum))

    def after_backward(
        self, step: int, record: dict[str, Any], nonfinite: dict[str, Any] | None, loss: float | None = None
    ) -> None:
        apply = self.mode == "auto"
        if nonfinite is not None:
            detail = self.guard(self.params, finite=False) if apply else {"mode": "skip"}
            self.emit("fix", step=step, name=self.guard.name, applied=apply, detail=detail)
            return
        action = self.clip.decide(
            record["grad_norm"], loss, parameter_norm(self.params) if self.clip.needs_parameter_norm() else None
        )
        if action is None:
            return
        if apply:
            rescale(self.params, action["scale"])
        self.emit("fix", step=step, name=self.clip.name, applied=apply, detail=action)

    def release(self) -> None:
        self._hook.remove()
        self.params = []
        self._param_ids = set()
