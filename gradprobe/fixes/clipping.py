"""Gradient clipping: by norm (Pascanu et al. 2013), by value (Mikolov 2012), adaptive (AutoClip).

Each clipper is called after ``backward`` with the parameters and the total
gradient norm gradprobe already measured, and returns what it did (or ``None``).
"""

from __future__ import annotations

import math
import statistics
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


def parameter_norm(parameters: Iterable[nn.Parameter]) -> float:
    """The total L2 norm of the parameters (as one vector)."""
    with torch.no_grad():
        squares = [p.detach().double().pow(2).sum() for p in parameters]
    return math.sqrt(float(sum(squares))) if squares else 0.0


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

    - only *accepted* norms enter the history: norms under the threshold,
      and, while a loss is given and not rising: clipped steps at their limit
      while clipping is rare (under ``max_clip_share`` of the recent steps, as
      ZClip updates its statistics with the clipped value), at the history's
      median while it is frequent. A healthy norm that grows moves the
      threshold up step by step; an explosion, clipped step after step,
      holds it where it is;
    - the threshold is ``exp(median + z * 1.4826 * MAD)`` of the log-norms in
      the history (a z-score on a robust scale), between ``headroom`` and
      ``ceiling`` x the median accepted norm, and, unless the loss shows the
      run learning (the median of the last ``start_losses`` losses under
      ``improved`` x the starting level), never over ``ceiling`` x the
      median of the first ``start_losses`` norms (the scale of the gradient
      before any update moved it): a slowly growing explosion (momentum
      overshooting on large targets) cannot teach it, a healthy growing norm
      of a learning run can;
    - before ``warmup`` norms are known the cap alone applies (from the
      first step: a norm over ``ceiling`` x the median so far is clipped);
    - the first ``warmup`` steps have little history to judge by, so a prior
      bounds them too, in the manner of adaptive gradient clipping (Brock et
      al. 2021): a norm over ``relative`` x the norm of the parameters is
      clipped to it (with ``param_norm`` given);
    - a model that explodes from its first step has no healthy norms to learn
      from, so the loss decides as well: while the loss is above ``brake`` x
      its starting level the applied norm is halved at every step (a
      multiplicative trust region), and it grows back by ``recovery`` per
      step once the loss is below that level again, up to the learned
      threshold. Without a loss (``loss=None``) only the norms decide.

    Args:
        max_norm: A fixed threshold, or ``None`` to learn it.
        z: Robust z-score above which a norm is clipped.
        ceiling: Largest threshold as a multiple of the median accepted norm.
        headroom: Smallest threshold as a multiple of the median accepted norm.
        warmup: Accepted norms before the z-score applies.
        history: Accepted norms kept.
        brake: Loss over this multiple of the starting level (the median of
            the first ``start_losses`` finite losses) brakes; ``None`` turns
            braking off (with momentum or an adaptive optimizer, where a
            smaller gradient does not make a smaller step).
        rise: Loss over this multiple of the starting level counts as
            rising: no norm of such a step enters the history, braking or not.
        start_losses: Finite losses that define the starting level.
        recovery: Growth factor of the braked limit per non-diverging step.
        floor: Smallest braked limit, as a multiple of the median accepted
            norm, so that braking never freezes training.
        relative: Largest norm in the first ``warmup`` steps, as a multiple
            of the parameters' norm.
        max_clip_share: Share of clipped steps among the last ``history``
            above which a clipped step no longer enters the history.
        improved: Recent loss level, as a share of the starting level, under
            which the run counts as learning.
    """

    max_norm: float | None = None
    z: float = 3.0
    ceiling: float = 10.0
    headroom: float = 2.0
    warmup: int = 10
    history: int = 200
    brake: float | None = 1.5
    rise: float = 1.5
    start_losses: int = 5
    recovery: float = 1.25
    floor: float = 0.01
    relative: float = 1.0
    max_clip_share: float = 0.1
    improved: float = 0.9
    _accepted: deque[float] = field(default_factory=deque, repr=False)
    _first_norms: list[float] = field(default_factory=list, repr=False)
    _recent_losses: deque[float] = field(default_factory=deque, repr=False)
    _improving: bool = field(default=False, repr=False)
    _clipped: deque[bool] = field(default_factory=deque, repr=False)
    _clipped_count: int = field(default=0, repr=False)
    _first_losses: list[float] = field(default_factory=list, repr=False)
    _braked_limit: float | None = field(default=None, repr=False)
    _last_applied: float | None = field(default=None, repr=False)
    _steps: int = field(default=0, repr=False)

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
        if len(self._first_norms) >= self.start_losses and not self._improving:
            cap = min(cap, math.log(self.ceiling * statistics.median(self._first_norms)))
        if len(logs) < self.warmup:
            return math.exp(cap)
        deviations = sorted(abs(v - median) for v in logs)
        mad = deviations[len(deviations) // 2]
        return math.exp(min(cap, median + max(self.z * 1.4826 * mad, math.log(self.headroom))))

    def diverging(self, loss: float | None) -> float | None:
        """The starting level (median of the first losses seen so far) when ``loss`` is over ``rise`` x it; else ``None``."""
        if self.max_norm is not None or loss is None or not math.isfinite(loss):
            return None
        start = statistics.median(self._first_losses) if self._first_losses else None
        if len(self._first_losses) < self.start_losses:
            self._first_losses.append(abs(loss))
        self._recent_losses.append(abs(loss))
        if len(self._recent_losses) > self.start_losses:
            self._recent_losses.popleft()
        if start is not None and len(self._first_losses) >= self.start_losses:
            self._improving = statistics.median(self._recent_losses) < self.improved * start
        return start if start is not None and abs(loss) > self.rise * start else None

    def _braked(self, norm: float, learned: float | None, diverging: bool) -> float | None:
        """The limit a diverging loss imposes: halved at every diverging step, regrown by ``recovery`` after."""
        if diverging:
            base = min(norm, self._last_applied or math.inf, self._braked_limit or math.inf)
            typical = statistics.median(self._accepted) if self._accepted else base
            self._braked_limit = max(0.5 * base, self.floor * typical)
        elif self._braked_limit is not None:
            self._braked_limit *= self.recovery
            if learned is None or self._braked_limit >= learned:
                self._braked_limit = None
        return self._braked_limit

    def needs_parameter_norm(self) -> bool:
        """Whether the next :meth:`decide` uses the parameters' norm (the prior of the first steps)."""
        return self.max_norm is None and self._steps < self.warmup

    def needs_prior(self, param_norm: float) -> bool:
        """Whether the prior of the first steps bounds this step, given the parameters' norm."""
        return self.needs_parameter_norm() and 0 < param_norm < math.inf

    def decide(self, norm: float, loss: float | None = None, param_norm: float | None = None) -> dict[str, Any] | None:
        """Say whether (and how) a gradient of this norm is clipped, and learn from it.

        ``loss`` is the loss of the step that produced the gradient; with it a
        diverging run brakes. ``param_norm`` (the norm of the parameters)
        bounds the first steps. See the class docstring.
        """
        if not math.isfinite(norm):
            return None
        prior = self.relative * param_norm if param_norm is not None and self.needs_prior(param_norm) else None
        self._steps += 1
        if len(self._first_norms) < self.start_losses and norm > 0:
            self._first_norms.append(norm)
        learned = self.threshold()
        start = self.diverging(loss)
        diverging = start is not None
        brakes = diverging and self.brake is not None and abs(loss or 0.0) > self.brake * (start or 0.0)
        braked = self._braked(norm, learned, brakes)
        limit = min((v for v in (learned, braked, prior) if v is not None), default=None)
        clipped = limit is not None and norm > limit
        self._last_applied = limit if clipped and limit is not None else norm
        healthy_loss = loss is not None and math.isfinite(loss) and not diverging
        clipping_is_rare = self._clipped_count < self.max_clip_share * max(len(self._clipped), self.warmup)
        self._clipped.append(clipped)
        self._clipped_count += clipped
        if len(self._clipped) > self.history:
            self._clipped_count -= self._clipped.popleft()
        if self.max_norm is None and braked is None and norm > 0 and not diverging:  # a rising loss teaches nothing
            if not clipped:
                entered: float | None = norm
            elif healthy_loss and clipping_is_rare:
                entered = self._last_applied  # at its limit: a healthy growing norm moves the threshold up slowly
            elif healthy_loss and self._accepted:
                entered = statistics.median(self._accepted)  # clipped again and again: it holds the threshold still
            else:
                entered = None
            if entered is not None:
                self._accepted.append(entered)
                while len(self._accepted) > self.history:
                    self._accepted.popleft()

        if limit is None or norm <= limit:
            return None
        action: dict[str, Any] = {"norm": norm, "max_norm": limit, "scale": limit / (norm + 1e-6)}
        if limit == braked:
            action["reason"] = "diverging loss"
        elif limit == prior:
            action["reason"] = "first steps: over the parameters' norm"
        return action

    def __call__(
        self, parameters: Iterable[nn.Parameter], norm: float, loss: float | None = None
    ) -> dict[str, Any] | None:
        parameters = list(parameters)
        action = self.decide(norm, loss, parameter_norm(parameters) if self.needs_parameter_norm() else None)
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
