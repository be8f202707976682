"""Delivery of each event to its consumers (run log, plugin hooks, sinks), every consumer isolated.

A consumer that raises is switched off alone, with one
:class:`~gradprobe.faults.GradprobeWarning` naming it: a broken TensorBoard
sink does not stop the run log, and a full disk stops only the run log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradprobe.faults import short, warn

Event = dict[str, Any]


@dataclass
class Consumer:
    """One receiver of events."""

    name: str
    deliver: Callable[[Event], None]
    close: Callable[[], None] | None = None
    failed: str | None = None


@dataclass
class EventBus:
    """Publishes events to named consumers; records and reports each one's first failure.

    Args:
        on_fault: Called with ``(consumer name, reason)`` once per failing
            consumer, after it is switched off (the probe writes an ``error``
            event through the consumers still working).
    """

    on_fault: Callable[[str, str], None] | None = None
    consumers: list[Consumer] = field(default_factory=list)

    def add(self, name: str, deliver: Callable[[Event], None], close: Callable[[], None] | None = None) -> None:
        self.consumers.append(Consumer(name, deliver, close))

    @property
    def faults(self) -> dict[str, str]:
        """Consumers switched off, with the reason."""
        return {c.name: c.failed for c in self.consumers if c.failed is not None}

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every working consumer; never raises."""
        for consumer in self.consumers:
            if consumer.failed is None:
                self._run(consumer, "delivering an event", consumer.deliver, event)

    def close(self) -> None:
        """Close every consumer that has a ``close``; never raises."""
        for consumer in self.consumers:
            if consumer.close is None:
                continue
            if consumer.failed is None:
                self._run(consumer, "closing", consumer.close)
            else:
                try:
                    consumer.close()  # release the file of a failed consumer; its fault is already reported
                except Exception:  # noqa: BLE001, S110
                    pass

    def _run(self, consumer: Consumer, doing: str, action: Callable[..., None], *args: Any) -> None:
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001 - a consumer must not break training or the other consumers
            consumer.failed = f"{doing}: {short(exc)}"
            warn(
                f"gradprobe switched off {consumer.name} after an error {consumer.failed}; the rest of the probe goes on",
                stacklevel=5,
            )
            if self.on_fault is not None:
                try:
                    self.on_fault(consumer.name, consumer.failed)
                except Exception:  # noqa: BLE001, S110 - reporting a fault must not raise either
                    pass


def sink_name(sink: object) -> str:
    """A readable name for a sink: its function or class name."""
    name = getattr(sink, "__qualname__", None) or type(sink).__qualname__
    return f"sink {name}"
