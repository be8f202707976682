"""A time budget for each call into a third-party plugin hook that runs on the caller's thread.

The caller brackets the call with :meth:`Watchdog.enter` and
:meth:`Watchdog.leave` and reads how long it took; a call that ran past the
budget gets its plugin switched off once it returns. A call that does not
return (an endless loop) is interrupted: a watchdog thread raises
:class:`HookTimeout` inside it (CPython's ``PyThreadState_SetAsyncExc``),
which the caller catches like any other plugin error. A call blocked inside
one long C call (``time.sleep``, a socket read) is interrupted when that C
call returns.

The exception can only land between ``enter`` and ``leave``: the watchdog
raises it under a lock while the call is still registered, and ``leave``
(under the same lock) unregisters the call and clears an exception that was
raised but not yet delivered. The caller must catch :class:`HookTimeout`
around ``leave`` as well as the call.

``GRADPROBE_HOOK_SECONDS`` sets the budget (default
:data:`DEFAULT_SECONDS`; ``0`` or less: no budget).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from dataclasses import dataclass

ENV = "GRADPROBE_HOOK_SECONDS"
DEFAULT_SECONDS = 10.0


class HookTimeout(BaseException):
    """Raised inside a plugin hook call that ran past its time budget.

    A ``BaseException``: a plugin's own ``except Exception`` does not swallow it.
    """


def budget_seconds() -> float | None:
    """The budget of one hook call from ``GRADPROBE_HOOK_SECONDS``; ``None`` for no budget."""
    raw = os.environ.get(ENV, "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_SECONDS
    except ValueError:
        seconds = DEFAULT_SECONDS
    return seconds if seconds > 0 else None


def _can_interrupt() -> bool:
    return sys.implementation.name == "cpython" and hasattr(ctypes, "pythonapi")


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise ``exc`` in the thread ``thread_id`` at its next bytecode; ``None`` clears one still pending."""
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else ctypes.c_void_p(None))


@dataclass
class HookCall:
    """One call in progress."""

    thread: int
    started: float
    #: Times the watchdog interrupted it (again after each further budget, should the hook swallow it).
    interruptions: int = 0
    previous: HookCall | None = None


class Watchdog:
    """Watches the hook calls in progress (one per thread) and interrupts those past ``seconds``.

    Args:
        seconds: The budget of one call.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._calls: dict[int, HookCall] = {}
        self._thread: threading.Thread | None = None

    def enter(self) -> HookCall:
        """Register a call starting now on this thread."""
        thread = threading.get_ident()
        with self._lock:
            call = HookCall(thread, time.monotonic(), previous=self._calls.get(thread))
            self._calls[thread] = call
            if self._thread is None and _can_interrupt():
                self._thread = threading.Thread(target=self._watch, name="gradprobe hook watchdog", daemon=True)
                self._thread.start()
        return call

    def leave(self, call: HookCall) -> float:
        """Unregister ``call`` (clearing an interruption not yet delivered); return the seconds it took since it
        started or was last interrupted. Calling it twice is harmless."""
        with self._lock:
            if call.previous is None:
                self._calls.pop(call.thread, None)
            else:
                self._calls[call.thread] = call.previous
            if call.interruptions:
                _raise_in(call.thread, None)
        return time.monotonic() - call.started

    def _watch(self) -> None:
        tick = min(0.5, self.seconds / 4)
        while True:
            time.sleep(tick)
            now = time.monotonic()
            with self._lock:
                for call in self._calls.values():
                    if now - call.started > self.seconds:
                        call.interruptions += 1
                        call.started = now
                        _raise_in(call.thread, HookTimeout)
