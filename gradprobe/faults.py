"""How gradprobe reports its own faults: one warning per failing part, never an exception into user code."""

from __future__ import annotations

import warnings


class GradprobeWarning(UserWarning):
    """Something inside gradprobe failed and was switched off; training is unaffected."""


def short(exc: BaseException) -> str:
    """``"TypeName: message"`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def warn(message: str, stacklevel: int = 3) -> None:
    """Issue one :class:`GradprobeWarning`."""
    warnings.warn(message, GradprobeWarning, stacklevel=stacklevel)
