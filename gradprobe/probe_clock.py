"""The probe's own time in each training step, every hook included (the budget of ``every="auto"`` needs it).

Every part of the probe that runs during a step (the forward hooks, the
backward wrapper, the end-of-backward snapshot, the optimizer hooks, the
recording and its events) runs inside the probe's guard, which brackets it
with :meth:`ProbeClock.enter` and :meth:`ProbeClock.leave`; nested parts count
once. :meth:`ProbeClock.take` reads the step's total (a part still running is
counted up to now) and starts the next step's.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ProbeClock:
    """Adds up the seconds spent inside the probe's outermost guarded calls.

    Args:
        clock: Seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._spent = 0.0
        self._depth = 0
        self._since = 0.0

    def enter(self) -> None:
        """A guarded part starts."""
        if self._depth == 0:
            self._since = self.clock()
        self._depth += 1

    def leave(self) -> None:
        """A guarded part ends."""
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0:
            self._spent += self.clock() - self._since

    def take(self) -> float:
        """The seconds spent since the last ``take`` (a part running now counts up to now); starts afresh."""
        spent = self._spent
        if self._depth:
            now = self.clock()
            spent += now - self._since
            self._since = now
        self._spent = 0.0
        return spent
