"""When the probe captures: a deep step every ``every`` steps, a saturation sample every ``saturation_every``.

:class:`Schedule` keeps fixed intervals. :class:`BudgetSchedule` (``attach(...,
every="auto", budget=0.03)``) measures what deep and sampled steps cost on this
model and machine and spaces them so that their extra time stays within a share
of the training time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gradprobe.recorders.capture import DEEP, OFF, SAMPLE, CaptureMode


def _ceil(value: float) -> int:
    """``ceil``, forgiving the round-off of times measured as differences (40.0000001 -> 40)."""
    return math.ceil(value - 1e-6 * max(1.0, abs(value)))


class Schedule:
    """The capture mode of each step.

    Args:
        every: Deep-probe every this many steps (step 0 included).
        saturation_every: Sample gate saturation every this many steps (0: only on deep steps).
    """

    def __init__(self, every: int, saturation_every: int) -> None:
        self.every = int(every)
        self.saturation_every = int(saturation_every)

    def mode_for(self, step: int) -> CaptureMode:
        """``deep``, ``sample`` or ``off`` for training step ``step``."""
        if step % self.every == 0:
            return DEEP
        if self.saturation_every and step % self.saturation_every == 0:
            return SAMPLE
        return OFF

    def observe(self, step: int, mode: CaptureMode, probe_seconds: float = 0.0) -> dict[str, Any] | None:
        """Note that step ``step`` (captured in ``mode``) ended, ``probe_seconds`` of it spent recording; a fixed
        schedule never changes."""
        return None


class BudgetSchedule(Schedule):
    """Deep and sampled steps spaced so that the probe's overhead stays within ``budget`` of the training time.

    The wall time of every step is measured between consecutive probe steps,
    and the probe's own recording time within it. On steps captured ``off``,
    the training step alone is the wall time minus the recording (``plain``,
    the median over recent steps) and the recording is the cheap cost paid on
    every step (``cheap``, the mean: it includes the steps that read a batch of
    deferred figures back). A deep (or sampled) step's extra time is its
    recording time minus ``cheap``, plus what its wall time outside the probe
    exceeds ``plain`` by (the capture's hooks; at most :data:`OUTSIDE_SHARE` of
    ``plain``, so that a pause between steps is not taken for probe time), the
    median of its recent measurements. What the
    budget leaves after the cheap cost goes to sampling (a third at most) and
    deep steps:

        allowed = budget * plain - cheap
        saturation_every = max(asked, ceil(sample_extra / (allowed / 3)))
        every = ceil(deep_extra / (allowed - sample_extra / saturation_every))

    When the cheap recording alone exceeds the budget, deep steps are spaced
    :data:`MAX_EVERY` apart and the choice says so (``over_budget``).

    Step 0 is deep, then ``warmup`` plain steps, then a second deep step (the
    first of a process pays a one-off warm-up, so its time is not used once a
    second is known); the intervals are chosen then and again after every deep
    step, each change reported by :meth:`observe`.

    Args:
        budget: The extra time allowed, as a share of a plain step (0.03: 3%).
        saturation_every: The sampling interval asked for (0: only on deep steps).
        warmup: Plain steps measured before the first choice.
        clock: Seconds, monotonic (tests pass a fake one).
    """

    #: Largest interval chosen (a deep step at least this often, however costly).
    MAX_EVERY = 100_000
    #: Most of a plain step that the capture's hooks may add to a deep or sampled step's forward and backward
    #: passes; time beyond it outside the probe is a pause between steps (an evaluation, a checkpoint).
    OUTSIDE_SHARE = 0.5

    def __init__(
        self, budget: float, saturation_every: int, warmup: int = 8, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        super().__init__(every=warmup + 1, saturation_every=0)
        self.budget = float(budget)
        self.asked_saturation_every = int(saturation_every)
        self.warmup = warmup
        self.clock = clock
        self.chosen = False
        self.last_deep = 0
        self._started: float | None = None
        self._plain: deque[float] = deque(maxlen=64)
        self._cheap: deque[float] = deque(maxlen=64)
        self._extra: dict[str, deque[float]] = {DEEP: deque(maxlen=8), SAMPLE: deque(maxlen=16)}
        self._first_deep_done = False

    def mode_for(self, step: int) -> CaptureMode:
        if step == 0 or step - self.last_deep >= self.every:
            return DEEP
        if self.saturation_every and step % self.saturation_every == 0:
            return SAMPLE
        return OFF

    def start(self) -> None:
        """The clock starts at the first step (attach time)."""
        self._started = self.clock()

    def observe(self, step: int, mode: CaptureMode, probe_seconds: float = 0.0) -> dict[str, Any] | None:
        now = self.clock()
        started, self._started = self._started, now
        if started is None:
            return None
        seconds = now - started
        if mode == DEEP:
            self.last_deep = step
        if mode == OFF:
            self._plain.append(max(seconds - probe_seconds, 0.0))
            self._cheap.append(probe_seconds)
        elif mode == DEEP and not self._first_deep_done:
            self._first_deep_done = True  # the process's first deep probe may hold a one-off warm-up: not used
        elif self._plain:  # beyond a cheap step: the plain step and its recording
            plain, cheap = statistics.median(self._plain), statistics.fmean(self._cheap)
            inside = probe_seconds - cheap  # the recording beyond a cheap step's
            outside = seconds - probe_seconds - plain  # the capture's hooks in forward and backward, or a pause
            self._extra[mode].append(max(inside + min(outside, self.OUTSIDE_SHARE * plain), 0.0))
        if len(self._plain) < self.warmup or not self._extra[DEEP] or (self.chosen and mode != DEEP):
            return None
        return self._choose(step)

    def _deep_extra(self) -> float | None:
        return statistics.median(self._extra[DEEP]) if self._extra[DEEP] else None

    def _choose(self, step: int) -> dict[str, Any] | None:
        plain = statistics.median(self._plain)
        deep = self._deep_extra()
        if deep is None or plain <= 0:
            return None
        cheap = statistics.fmean(self._cheap)
        allowed = self.budget * plain - cheap
        sample = statistics.median(self._extra[SAMPLE]) if self._extra[SAMPLE] else 0.0
        saturation_every = self.asked_saturation_every
        over_budget = allowed <= 0
        if over_budget:
            every = self.MAX_EVERY
            saturation_every = self.MAX_EVERY if saturation_every else 0
        else:
            if saturation_every and sample > 0:
                saturation_every = max(saturation_every, _ceil(sample / (allowed / 3)))
            left = allowed - (sample / saturation_every if saturation_every else 0.0)
            every = min(self.MAX_EVERY, max(1, _ceil(deep / left)))
        changed = not self.chosen or every != self.every or saturation_every != self.saturation_every
        self.every, self.saturation_every, self.chosen = every, saturation_every, True
        if not changed:
            return None
        overhead = cheap + deep / every + (sample / saturation_every if saturation_every else 0.0)
        return {
            "step": step,
            "every": every,
            "saturation_every": saturation_every,
            "budget": self.budget,
            "plain_ms": plain * 1e3,
            "cheap_ms": cheap * 1e3,
            "deep_extra_ms": deep * 1e3,
            "sample_extra_ms": sample * 1e3,
            "expected_overhead": overhead / plain,
            "over_budget": over_budget,
        }
