"""When the backward sweep re-orthonormalizes its Lyapunov vectors (QR steps), and the exponents they give."""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Steps between two QR re-orthonormalizations of the Lyapunov vectors off the CPU, where the period cannot
#: adapt (see :class:`_LyapunovPeriods`).
LYAPUNOV_EVERY = 2
#: The first period on the CPU: from 10 steps on it lies in the burn-in, so a spread beyond :data:`LYAPUNOV_SPREAD`
#: within it costs no accuracy.
LYAPUNOV_FIRST = 4
#: Longest period between two QR steps on the CPU, where periods adapt to how fast the vectors pull apart.
LYAPUNOV_MAX_EVERY = 32
#: Largest growth ratio between the Lyapunov vectors allowed to build up within one period (its float32
#: rounding, ``1e3 * 6e-8``, stays far below what the exponents are read to).
LYAPUNOV_SPREAD = 1e3
#: Largest factor by which one Lyapunov vector may grow or shrink within one period (far from float32's
#: range, ``1e38``, and its subnormals below ``1e-38``).
LYAPUNOV_RANGE = 1e10


class LyapunovPeriods:
    """When the backward sweep re-orthonormalizes its Lyapunov vectors, and the exponents from its QR steps.

    Between two QR steps the vectors grow at their own rates; the QR must come
    before the fastest outgrows the slowest beyond floating-point resolution
    (or any of them leaves it), and each costs ~25 µs on the CPU. After each QR
    step the ratio of the largest to the smallest ``|R_ii|`` gives how fast
    they pulled apart per step, and the next period lets them pull apart by at most
    :data:`LYAPUNOV_SPREAD` and grow or shrink by at most
    :data:`LYAPUNOV_RANGE`, growing at most twofold and shrinking at once
    (down to one step), from :data:`LYAPUNOV_FIRST` up to
    :data:`LYAPUNOV_MAX_EVERY`. On the CPU that costs one tiny read-back per QR
    step; elsewhere, where a read-back would stall the device's queue, the
    period stays at :data:`LYAPUNOV_EVERY`. The exponents are read from all
    diagonals at once at the end, and they do not depend on the
    periods: the diagonal of a product of triangular factors is the product of
    their diagonals.
    """

    def __init__(self, device: torch.device, steps: int) -> None:
        self.steps, self.burn_in = steps, steps // 10
        self.adapt = device.type == "cpu" and LYAPUNOV_MAX_EVERY > LYAPUNOV_EVERY
        self.period = min(LYAPUNOV_FIRST, LYAPUNOV_MAX_EVERY) if self.adapt else LYAPUNOV_EVERY
        self.last = 0  # steps swept at the last QR step
        self.diagonals: list[Tensor] = []  # of the R factors, in processing order back from the end
        self.covered: list[int] = []  # steps each QR step covers

    def due(self, done: int) -> bool:
        """Whether a QR step follows the ``done``-th swept step (always at the end of the burn-in, so that it
        drops exactly ``steps // 10`` steps whatever the periods, and at the last step)."""
        return done - self.last >= self.period or done == self.steps or done == self.burn_in

    def add(self, upper: Tensor, done: int) -> None:
        """Keep the R factor of the QR step after the ``done``-th swept step and choose the next period."""
        span = done - self.last
        self.covered.append(span)
        self.last = done
        self.diagonals.append(upper.diagonal())
        if not self.adapt:
            return
        sizes = [abs(value) for value in self.diagonals[-1].tolist()]
        if not all(0 < size < math.inf for size in sizes):  # a vector lost (or NaN): every step from now on
            self.period = 1
            return
        logs = [math.log(size) for size in sizes]
        spread = max(logs) - min(logs)
        change = max(abs(value) for value in logs)
        allowed = min(
            span * math.log(LYAPUNOV_SPREAD) / spread if spread > 0 else math.inf,
            span * math.log(LYAPUNOV_RANGE) / change if change > 0 else math.inf,
        )
        self.period = max(1, min(int(min(allowed, LYAPUNOV_MAX_EVERY)), 2 * self.period))

    def exponents(self) -> list[float]:
        """``lambda_i = mean log |R_ii|`` over the steps after the burn-in (``steps // 10``), largest first;
        empty without QR steps (no Lyapunov vectors)."""
        if not self.covered:
            return []
        burn, dropped = 0, 0
        while dropped < self.burn_in:  # a QR step falls at its end, and the last one after it
            dropped += self.covered[burn]
            burn += 1
        tiny = torch.finfo(torch.float64).tiny
        logs = torch.stack(self.diagonals[burn:]).double().abs().clamp_min(tiny).log()
        return (logs.sum(dim=0) / (self.steps - dropped)).sort(descending=True).values.tolist()
