"""What the running test considers healthy: set by the pytest plugin, read by :mod:`gradprobe.testing`.

Kept apart from :mod:`gradprobe.testing` so that the pytest plugin can set it
without importing torch. The state is a :class:`contextvars.ContextVar` set
around each test call (and reset after it), never a module global: a helper
called outside a test, or in another thread, sees none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from gradprobe.config import Options


@dataclass(frozen=True)
class TestHealth:
    """The running test's gradient-health settings and where its checked reports go.

    Attributes:
        options: The rule keywords and declared needs of the test's ``gradprobe``
            markers (the closest wins) over the session's failing severity.
        collect: Called with each checked report (for ``--gradprobe-report``).
    """

    __test__ = False  # not a pytest test class

    options: Options
    collect: Callable[[Any], None] | None = None


_CURRENT: ContextVar[TestHealth | None] = ContextVar("gradprobe_test_health", default=None)


def current() -> TestHealth:
    """The running test's settings (the defaults outside a test)."""
    return _CURRENT.get() or TestHealth(Options())


@contextmanager
def running(health: TestHealth) -> Iterator[None]:
    """``health`` is the current test's inside the block."""
    token = _CURRENT.set(health)
    try:
        yield
    finally:
        _CURRENT.reset(token)
