"""Guard against Inf/NaN gradients: skip the update, or take a bounded random step."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class NonFiniteGuard:
    """Act when any gradient holds Inf or NaN.

    Args:
        mode: ``"skip"`` sets every ``p.grad`` to ``None``, so
            ``optimizer.step()`` leaves the parameters (and optimizer state)
            untouched; ``"random"`` replaces the gradient by a random
            direction of total norm ``step_size`` (Pascanu et al. 2013).
        step_size: Norm of the random step, ``v`` in the paper.
        seed: Seed of the guard's private generator.
    """

    mode: str = "skip"
    step_size: float = 1e-2
    seed: int = 0
    safe = True
    name = "nonfinite-guard"

    def __post_init__(self) -> None:
        if self.mode not in ("skip", "random"):
            raise ValueError(f"mode must be 'skip' or 'random', got {self.mode!r}")
        self._generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, parameters: Iterable[nn.Parameter], finite: bool) -> dict[str, Any] | None:
        if finite:
            return None
        params = [p for p in parameters if p.grad is not None]
        if self.mode == "skip":
            for p in params:
                p.grad = None
            return {"mode": "skip", "parameters": len(params)}
        noise = [torch.randn(p.shape, generator=self._generator, dtype=p.dtype).to(p.device) for p in params]
        total = torch.sqrt(torch.stack([(n.double() ** 2).sum() for n in noise]).sum()).item() if noise else 1.0
        for p, n in zip(params, noise):
            p.grad = n * (self.step_size / total)
        return {"mode": "random", "step_size": self.step_size, "parameters": len(params)}
