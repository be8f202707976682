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
    """Rescale all gradients so their total L2 norm is at most a threshold.

    With ``max_norm`` given, that is the threshold. Without it the threshold is
    learned robustly, in the manner of ZClip, so that an explosion already
    under way cannot teach it:

    - only *accepted* norms (not clipped) enter the history, so a run of
      exploding steps never raises the threshold;
    - the threshold is ``exp(median + z * 1.4826 * MAD)`` of the log-norms in
      the history (a z-score on a robust scale), capped at ``ceiling`` x the
      median accepted norm;
    - before ``warmup`` norms are known the cap alone applies (from the
      first step: a norm over ``ceiling`` x the median so far is clipped).

    Args:
        max_norm: A fixed threshold, or ``None`` to learn it.
        z: Robust z-score above which a norm is clipped.
        ceiling: Largest threshold as a multiple of the median accepted norm.
        warmup: Accepted norms before the z-score applies.
        history: Accepted norms kept.
    """

    max_norm: float | None = None
    z: float = 3.0
    ceiling: float = 10.0
    warmup: int = 10
    history: int = 200
    _accepted: deque[float] = field(default_factory=deque, repr=False)

    safe = True
    name = "clip-grad-norm"

    def threshold(self) -> float | None:
        """The threshold in force (``None`` before the first accepted norm)."""
        if self.max_norm is not None:
            return self.max_norm
        if not self._accepted:
            return None
        logs = sorted(math.log(v) for v in self._accepted)
        median = logs[len(logs) // 2] if len(logs) % 2 else 0.5 * (logs[len(logs) // 2 - 1] + logs[len(logs) // 2])
        cap = median + math.log(self.ceiling)
        if len(logs) < self.warmup:
            return math.exp(cap)
        deviations = sorted(abs(v - median) for v in logs)
        mad = deviations[len(deviations) // 2]
        return math.exp(min(cap, median + self.z * 1.4826 * mad))

    def decide(self, norm: float) -> dict[str, Any] | None:
        """Say whether (and how) a gradient of this norm is clipped, and learn from it."""
        if not math.isfinite(norm):
            return None
        limit = self.threshold()
        if limit is None or norm <= limit:
            if self.max_norm is None and norm > 0:
                self._accepted.append(norm)
                while len(self._accepted) > self.history:
                    self._accepted.popleft()
            return None
        return {"norm": norm, "max_norm": limit, "scale": limit / (norm + 1e-6)}

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
