"""Truncated BPTT, detected: the typical window of a loop that carries a detached state from step to step.

A step whose sequence starts from a detached copy of the previous step's
final state is one window of truncated BPTT. Windows vary: the last batch of
an epoch is shorter (pytorch/examples' word language model), and AWD-LSTM
draws each window's length at random around its BPTT length. The window a
loop uses is the typical one, the median of the windows seen, never the
latest one alone. A ``loop`` event is published when it is first seen and
whenever the typical window moves by more than :data:`MOVE` of itself.
"""

from __future__ import annotations

from collections import Counter

from gradprobe.quantities.base import Quantity, QuantitySetup, StepContext
from gradprobe.recorders.capture import DEEP, OFF, SAMPLE

#: Relative change of the typical window that is published again.
MOVE = 0.1


class TruncationWindows(Quantity):
    """The typical truncated-BPTT window per recurrent site (every step, in every mode)."""

    modes = frozenset({OFF, SAMPLE, DEEP})
    needs = frozenset()  # the sequence bookkeeping every step keeps is enough
    on_nonfinite_steps = True

    def __init__(self, setup: QuantitySetup | None = None) -> None:
        self._windows: dict[str, Counter[int]] = {}
        #: The typical window per site, as last published.
        self.published: dict[str, int] = {}

    def compute(self, context: StepContext) -> None:
        for name, sequence in context.record.sequences.items():
            if not sequence.carried or sequence.length < 1:
                continue
            counts = self._windows.setdefault(name, Counter())
            counts[sequence.length] += 1
            typical = weighted_median(counts)
            last = self.published.get(name)
            if last is None or abs(typical - last) > MOVE * last:
                self.published[name] = typical
                context.emit("loop", step=context.step, layer=name, truncation=typical)

    @property
    def window(self) -> int | None:
        """The typical window of the first site that has one."""
        return next(iter(self.published.values()), None)


def weighted_median(counts: Counter[int]) -> int:
    """The median of the values counted (the lower middle one for an even total)."""
    total = sum(counts.values())
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if 2 * seen >= total:
            return value
    raise ValueError("no value counted")
