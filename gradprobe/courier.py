"""Delivery to one slow consumer (a sink) from a bounded queue on its own background thread.

The training thread only puts the event on the queue (a few microseconds);
a sink that is slow, blocks on the network or hangs for good never holds a
step up. When its queue is full the courier drops events (counted, one
warning from the owner) instead of waiting; when the run closes it is given
a bounded time to finish, then abandoned (a daemon thread never keeps the
interpreter alive).

A courier never warns or reports from its own thread: what went wrong is
kept (:attr:`Courier.error`, :attr:`Courier.dropped`) for the owner to
report on the training thread, so that warnings land where the user's
``pytest.warns`` or ``warnings.catch_warnings`` can see them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from gradprobe.faults import short

#: Events a consumer may fall behind by before the courier drops new ones.
CAPACITY = 4096
#: Seconds a run's close waits for its couriers to deliver what they hold, all together.
CLOSE_SECONDS = 5.0
_STOP = object()


class Courier:
    """One consumer's queue and delivery thread.

    Args:
        name: The consumer, for the thread's name.
        deliver: Called with each event on the courier's thread.
        capacity: Events held at most while ``deliver`` is busy (default :data:`CAPACITY`).
    """

    def __init__(self, name: str, deliver: Callable[[Any], None], capacity: int | None = None) -> None:
        self.name = name
        self._deliver = deliver
        self.capacity = capacity = CAPACITY if capacity is None else capacity
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        #: Why ``deliver`` was switched off (it raised), once it was.
        self.error: str | None = None
        #: Events dropped because the queue was full.
        self.dropped = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    def put(self, event: Any) -> bool:
        """Queue one event; ``False`` (and counted in :attr:`dropped`) when the queue is full. Never blocks."""
        if self.error is not None or self._stopping:
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"gradprobe {self.name}", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is _STOP:
                return
            if self.error is not None:
                continue  # switched off: let the queue run dry without delivering
            try:
                self._deliver(event)
            except BaseException as exc:  # noqa: BLE001 - any failure of a sink switches that sink off, nothing more
                self.error = f"delivering an event: {short(exc)}"

    def stop(self, deadline: float) -> bool:
        """Deliver what is queued (until ``deadline`` at most), then end the thread; ``True`` when it ended in
        time. A courier that does not is left to finish alone (a daemon thread)."""
        self._stopping = True
        if self._thread is None:
            return True
        try:
            self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()
