"""When the probe captures: a deep step every ``every`` steps, a saturation sample every ``saturation_every``."""

from __future__ import annotations

from gradprobe.recorders.capture import DEEP, OFF, SAMPLE


class Schedule:
    """The capture mode of each step.

    Args:
        every: Deep-probe every this many steps (step 0 included).
        saturation_every: Sample gate saturation every this many steps (0: only on deep steps).
    """

    def __init__(self, every: int, saturation_every: int) -> None:
        self.every = int(every)
        self.saturation_every = int(saturation_every)

    def mode_for(self, step: int) -> str:
        """``deep``, ``sample`` or ``off`` for training step ``step``."""
        if step % self.every == 0:
            return DEEP
        if self.saturation_every and step % self.saturation_every == 0:
            return SAMPLE
        return OFF
