"""Delivery of each event to its consumers (run log, plugin hooks, sinks, rules), every consumer isolated.

:class:`EventRouter` is the probe's one way out (``emit``); it delivers
through an :class:`EventBus` and feeds the rule engine.

A consumer that raises is switched off alone, with one
:class:`~gradprobe.faults.GradprobeWarning` naming it: a broken TensorBoard
sink does not stop the run log, and a full disk stops only the run log.
Sinks receive events on a background thread each (:mod:`gradprobe.courier`):
a slow or hung sink loses events, with one warning, and never holds a
training step up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from torch import nn

from gradprobe import courier as couriers
from gradprobe.courier import Courier
from gradprobe.event_kinds import Kind
from gradprobe.events import EventWriter
from gradprobe.faults import short, warn
from gradprobe.findings import Finding
from gradprobe.frozen import frozen

T = TypeVar("T")

#: A receiver of every event dict (a TensorBoard writer, a W&B logger).
Sink = Callable[[dict[str, Any]], None]

Event = dict[str, Any]


@dataclass
class Consumer:
    """One receiver of events."""

    name: str
    deliver: Callable[[Event], None]
    close: Callable[[], None] | None = None
    failed: str | None = None
    #: Delivers on a background thread (a sink), else ``None`` (on the caller's thread).
    courier: Courier | None = None
    #: Whether the events it dropped (falling behind) were reported.
    drops_reported: bool = False


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

    def add(
        self,
        name: str,
        deliver: Callable[[Event], None],
        close: Callable[[], None] | None = None,
        background: bool = False,
    ) -> Consumer:
        """Add a consumer (and return it); ``background`` delivers to it from a bounded queue on its own thread."""
        consumer = Consumer(name, deliver, close, courier=Courier(name, deliver) if background else None)
        self.consumers.append(consumer)
        return consumer

    def add_failed(self, name: str, reason: str, stacklevel: int) -> None:
        """A consumer that failed before it could start: listed among the faults, reported once like any."""
        consumer = Consumer(name, _nothing)
        self.consumers.append(consumer)
        self._switch_off(consumer, reason, stacklevel + 2)  # the caller sees it where it saw it before

    @property
    def faults(self) -> dict[str, str]:
        """Consumers switched off, with the reason."""
        return {c.name: c.failed for c in self.consumers if c.failed is not None}

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every working consumer; never raises."""
        for consumer in self.consumers:
            if consumer.failed is not None:
                continue
            courier = consumer.courier
            if courier is None:
                self.run(consumer, "delivering an event", consumer.deliver, event)
            else:
                if courier.error is not None or (courier.dropped and not consumer.drops_reported):
                    self._report_background(consumer)
                courier.put(event)

    def _report_background(self, consumer: Consumer) -> None:
        """Report, on the caller's thread, what went wrong on a consumer's background thread (once each)."""
        courier = consumer.courier
        if courier is None or consumer.failed is not None:
            return
        if courier.error is not None:
            self._switch_off(consumer, courier.error, stacklevel=6)
        elif courier.dropped and not consumer.drops_reported:
            consumer.drops_reported = True
            reason = f"falling behind: it dropped events (its queue of {courier.capacity} was full)"
            warn(f"gradprobe's {consumer.name} is {reason}; training is not held up", stacklevel=6)
            self._tell(consumer.name, reason)

    def close(self) -> None:
        """Let the background consumers deliver what they hold (for :data:`gradprobe.courier.CLOSE_SECONDS` at
        most, all together), then close every consumer that has a ``close``; never raises."""
        seconds = couriers.CLOSE_SECONDS
        deadline = time.monotonic() + seconds
        for consumer in self.consumers:
            courier = consumer.courier
            if courier is None:
                continue
            if not courier.stop(deadline) and consumer.failed is None:
                consumer.failed = f"closing: still busy after {seconds:g} s; events not delivered"
                warn(f"gradprobe gave up on {consumer.name}, {consumer.failed}", stacklevel=4)
            else:
                self._report_background(consumer)
        for consumer in self.consumers:
            if consumer.close is None:
                continue
            if consumer.failed is None:
                self.run(consumer, "closing", consumer.close)
            else:
                try:
                    consumer.close()  # release the file of a failed consumer; its fault is already reported
                except Exception:  # noqa: BLE001, S110
                    pass

    def run(self, consumer: Consumer, doing: str, action: Callable[..., None], *args: Any) -> None:
        """``action(*args)`` for ``consumer``: whatever it raises (Ctrl-C aside) switches that consumer off."""
        try:
            action(*args)
        except KeyboardInterrupt:  # the user's Ctrl-C goes on to the user
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit and GeneratorExit too: a consumer must not break training or the other consumers
            self._switch_off(consumer, f"{doing}: {short(exc)}", stacklevel=6)

    def _switch_off(self, consumer: Consumer, reason: str, stacklevel: int) -> None:
        consumer.failed = reason
        warn(
            f"gradprobe switched off {consumer.name} after an error {reason}; the rest of the probe goes on",
            stacklevel=stacklevel,
        )
        self._tell(consumer.name, reason)

    def _tell(self, name: str, reason: str) -> None:
        if self.on_fault is not None:
            try:
                self.on_fault(name, reason)
            except Exception:  # noqa: BLE001, S110 - reporting a fault must not raise either
                pass


def sink_name(sink: object) -> str:
    """A readable name for a sink: its function or class name."""
    name = getattr(sink, "__qualname__", None) or type(sink).__qualname__
    return f"sink {name}"


class Judge(Protocol):
    """The rule engine as the probe sees it (:class:`gradprobe.rules.engine.RuleEngine`)."""

    def feed(self, event: Event) -> list[Finding]:
        """Show the rules one event; return the findings it brought."""
        ...

    def call_hook(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call one plugin hook on every plugin."""
        ...

    def lint(self, model: nn.Module, sites: list[Any], keep: bool = False) -> list[Finding]:
        """The static findings of a model."""
        ...

    def findings(self) -> list[Finding]:
        """The findings so far."""
        ...

    def finish(self) -> list[Finding]:
        """The findings only the end of the run can tell."""
        ...


def _nothing(event: Event) -> None:
    """The delivery of a consumer that never started."""


#: Kinds the rules are not shown: their own findings, and a consumer's fault.
NOT_JUDGED = frozenset({"finding", "fault"})


class EventRouter:
    """The one way out for every event: the run log, the sinks and the plugin hooks (each isolated, an
    :class:`EventBus`), then the rules, whose findings go out the same way.

    A rule engine that raises is switched off alone (``rules_error``), with a
    ``fault`` event and one warning; measuring and the consumers go on.

    Args:
        judge: The rule engine.
        writer: The run log, if any (the first consumer).
        sinks: Callables receiving every event, after the plugin hooks.
    """

    def __init__(self, judge: Judge, writer: EventWriter | None = None, sinks: Sequence[Sink] = ()) -> None:
        self.judge = judge
        self.writer = writer
        self.bus = EventBus(on_fault=self._report_fault)
        #: The training step the events belong to (for ``fault`` events).
        self.step = 0
        #: Why the rules were switched off, once they were.
        self.rules_error: str | None = None
        #: The run log's consumer, if there is a log.
        self._log = (
            None if writer is None else self.bus.add(f"the run log {writer.path}", writer.write_event, writer.close)
        )
        self.bus.add("plugin hooks", self._call_event_hook)
        for sink in sinks:
            self.bus.add(sink_name(sink), sink, background=True)

    def switched_off(self, name: str, reason: str) -> None:
        """A consumer that failed before it could start (a run log that cannot be opened): listed among the
        faults, reported once (a warning and a ``fault`` event to the consumers that work)."""
        self.bus.add_failed(name, reason, stacklevel=5)

    def release_log(self) -> None:
        """Start writing the run log (held until the probe started, so that a failed start leaves an earlier log
        untouched); never raises."""
        if self._log is not None and self._log.failed is None and self.writer is not None:
            self.bus.run(self._log, "writing the events held until the probe started", self.writer.release)

    def flush_log(self) -> None:
        """Write what the run log holds to disk now (before the probe switches itself off); never raises."""
        if self.writer is not None:
            try:
                self.writer.flush()
            except Exception:  # noqa: BLE001, S110 - the log writer reports its own fault
                pass

    def _call_event_hook(self, event: Event) -> None:
        self.judge.call_hook("gradprobe_event_written", event=event)

    def emit(self, kind: Kind, **fields: Any) -> None:
        """Publish one event; show it to the rules and publish the findings it brought. Never raises."""
        event = frozen({"kind": kind, **fields})
        self.bus.publish(event)
        if kind not in NOT_JUDGED:
            self.publish_findings(self.judged("observing an event", lambda: self.judge.feed(event)))

    def publish_findings(self, findings: list[Finding] | None) -> None:
        """A ``finding`` event for each finding (the rules are not shown their own findings)."""
        for finding in findings or []:
            self.bus.publish(frozen({"kind": "finding", **finding.to_dict()}))

    def judged(self, doing: str, body: Callable[[], T]) -> T | None:
        """``body()`` run on the rule engine; ``None`` once the rules are off (switched off if it raises)."""
        if self.rules_error is not None:
            return None
        try:
            return body()
        except KeyboardInterrupt:  # the user's Ctrl-C goes on to the user
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit and GeneratorExit too: a rule bug must not break training or measuring
            self.rules_error = f"{doing}: {short(exc)}"
            warn(f"gradprobe switched off its rules after an error {self.rules_error}; measuring goes on", stacklevel=5)
            self.bus.publish({"kind": "fault", "step": self.step, "part": "rules", "message": self.rules_error})
            return None

    @property
    def faults(self) -> dict[str, str]:
        """Consumers and the rules switched off, with the reason."""
        out = self.bus.faults
        if self.rules_error is not None:
            out["rules"] = self.rules_error
        return out

    def close(self) -> None:
        """Close every consumer; never raises."""
        self.bus.close()

    def _report_fault(self, part: str, reason: str) -> None:
        self.bus.publish({"kind": "fault", "step": self.step, "part": part, "message": reason})
