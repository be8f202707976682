"""Gradient clipping: by norm (Pascanu et al. 2013), by value (Mikolov 2012), adaptive (AutoClip).

Each clipper is called after ``backward`` with the parameters and the total
gradient norm gradprobe already measured, and returns what it did (or ``None``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


def _grads(parameters: Iterable[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad for p in parameters if p.grad is not None]


def rescale(parameters: Iterable[nn.Parameter], scale: float) -> None:
    """Multiply every gradient by ``scale`` in place."""
    for grad in _grads(parameters):
        grad.mul_(scale)


def quantile(values: Iterable[float], q: float) -> float:
    """The ``q``-quantile (linear interpolation) of finite values; NaN when there are none."""
    data = sorted(v for v in values if math.isfinite(v))
    if not data:
        return float("nan")
    position = q * (len(data) - 1)
    low, high = math.floor(position), math.ceil(position)
    return data[low] + (data[high] - data[low]) * (position - low)


@dataclass
class ClipGradNorm:
    """Rescale all gradients so their total L2 norm is at most ``max_norm``.

    Args:
        max_norm: The threshold. ``None``: observe ``warmup`` steps, then fix
            the threshold at ``factor`` times the ``quantile`` of the norms seen.
        quantile: Quantile of the warm-up norms used when ``max_norm`` is None.
        factor: Multiplier on that quantile (headroom above typical norms).
        warmup: Steps observed before an automatic threshold is set.
    """

    max_norm: float | None = None
    quantile: float = 0.9
    factor: float = 2.0
    warmup: int = 20
    _seen: list[float] = field(default_factory=list, repr=False)

    safe = True
    name = "clip-grad-norm"

    def decide(self, norm: float) -> dict[str, Any] | None:
        """Update the warm-up and say whether (and how) a gradient of this norm would be clipped."""
        if self.max_norm is None:
            if math.isfinite(norm):
                self._seen.append(norm)
            if len(self._seen) < self.warmup:
                return None
            self.max_norm = self.factor * quantile(self._seen, self.quantile)
            self._seen = []
        if not math.isfinite(norm) or norm <= self.max_norm:
            return None
        return {"norm": norm, "max_norm": self.max_norm, "scale": self.max_norm / (norm + 1e-6)}

    def __call__(self, parameters: Iterable[nn.Parameter], norm: float) -> dict[str, Any] | None:
        action = self.decide(norm)
        if action is not None:
            rescale(parameters, action["scale"])
        return action


@dataclass
class ClipGradValue:
    """Clamp every gradient entry into ``[-clip_value, clip_value]``."""

    clip_value: float
    safe = True
    name = "clip-grad-value"

    def __call__(self, parameters: Iterable[nn.Parameter], norm: float) -> dict[str, Any] | None:
        clipped = 0
        for grad in _grads(parameters):
            over = grad.abs() > self.clip_value
            count = int(over.sum())
            if count:
                clipped += count
                grad.clamp_(-self.clip_value, self.clip_value)
        return {"clip_value": self.clip_value, "entries": clipped} if clipped else None


@dataclass
class AdaptiveClip:
    """AutoClip (Seetharaman et al. 2020): clip by norm at a percentile of the norm history.

    Args:
        percentile: Percentile (0-100) of the recorded norms used as threshold.
        history: How many recent norms to keep.
        min_history: Steps before clipping starts.
    """

    percentile: float = 10.0
    history: int = 1000
    min_history: int = 10
    _norms: deque[float] = field(default_factory=deque, repr=False)

    safe = True
    name = "adaptive-clip"

    def __call__(self, parameters: Iterable[nn.Parameter], norm: float) -> dict[str, Any] | None:
        if math.isfinite(norm):
            self._norms.append(norm)
            while len(self._norms) > self.history:
                self._norms.popleft()
        if len(self._norms) < self.min_history or not math.isfinite(norm):
            return None
        threshold = quantile(self._norms, self.percentile / 100)
        if norm <= threshold:
            return None
        scale = threshold / (norm + 1e-6)
        rescale(parameters, scale)
        return {"norm": norm, "max_norm": threshold, "scale": scale}
