"""The run log: JSON Lines, one event per line, versioned schema.

Every event is a JSON object with at least ``{"v": 1, "kind": ...}``. The
kinds (``meta``, ``step``, ``deep``, ``saturation``, ``unmeasured``, ``loop``,
``schedule``, ``fix``, ``finding``, ``error``, ``fault``), their fields and
types are defined once, in :mod:`gradprobe.event_kinds` (the reference page
``docs/events.md`` is generated from it); :mod:`gradprobe.schema` checks
events against it, and events that do not fit are skipped by readers and
reported with their line numbers.

Readers tolerate a truncated last line (a killed run) and report corrupt lines
with their line numbers instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gradprobe import fast_lines
from gradprobe.event_kinds import URGENT as URGENT_KINDS
from gradprobe.log_file import claim
from gradprobe.printable import strip_control
from gradprobe.schema import problem as schema_problem

SCHEMA_VERSION = 1


def parse_line(raw: bytes) -> Any:
    """One JSON line, with msgspec when it is installed (``gradprobe[fast]``).

    What msgspec refuses (``NaN`` literals, text that is not UTF-8) goes to
    the standard parser, which reads the first and raises ``UnicodeDecodeError``
    on the second as it always did, so both parsers accept the same lines.
    """
    loads, error, _ = fast_lines.readers()
    try:
        return loads(raw)
    except error:
        return json.loads(raw)


def json_safe(value: Any) -> Any:
    """Make a value JSON-safe: non-finite floats become strings ``"nan"``/``"inf"``/``"-inf"``."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def number(value: Any) -> float | None:
    """A number read from an event: undoes the ``"nan"``/``"inf"`` encoding; ``None`` (or junk) gives ``None``."""
    if type(value) is float:  # most values, read without a conversion
        return value
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float (a 400-digit loss): as large as a float can say
        return (math.inf if value > 0 else -math.inf) if isinstance(value, int) else None
    except (TypeError, ValueError):
        return None


def finite_number(value: Any) -> float | None:
    """:func:`number`, with non-finite values as ``None``."""
    if type(value) is float:  # most values, read without a conversion
        return value if math.isfinite(value) else None
    result = number(value)
    return result if result is not None and math.isfinite(result) else None


class EventWriter:
    """Appends events to a JSON Lines file and flushes at least every ``flush_seconds``.

    The file is claimed first (:func:`gradprobe.log_file.claim`): a path that
    another live writer holds is never truncated or shared; the log goes to
    ``run.1.log`` (then :attr:`moved_from` names the path asked for).

    Args:
        path: The log file; created (with parent folders) or truncated.
        flush_seconds: Longest time an event may sit in the buffer. Events of
            the kinds that matter if the run dies next (``urgent`` in
            :mod:`gradprobe.event_kinds`: ``meta``, ``deep``, ``fix``,
            ``finding``, ``error``) flush at once.
        hold: Keep events in memory, and an existing file as it is, until
            :meth:`release` (a probe whose start fails leaves an earlier log
            untouched; :meth:`close` before :meth:`release` writes nothing).
    """

    URGENT = URGENT_KINDS

    def __init__(self, path: str | os.PathLike[str], flush_seconds: float = 2.0, hold: bool = False) -> None:
        asked = Path(path)
        self.path, fd, self._created = claim(asked)
        #: The path asked for, when another writer held it and this log went to a numbered sibling.
        self.moved_from: Path | None = asked if self.path != asked else None
        self._held: list[str] | None = [] if hold else None
        if not hold:
            os.ftruncate(fd, 0)
        self._file: IO[str] | None = os.fdopen(fd, "w", encoding="utf-8")
        self.flush_seconds = flush_seconds
        self._last_flush = time.monotonic()

    def release(self) -> None:
        """Replace the file's content with the events held so far, and write the next ones as they come."""
        held, self._held = self._held, None
        if held is None or self._file is None:
            return
        os.ftruncate(self._file.fileno(), 0)
        self._file.writelines(held)
        self.flush()

    def write(self, kind: str, **fields: Any) -> None:
        """Write one event ``{"v": 1, "kind": kind, "time": ..., **fields}``."""
        if self._file is None:
            return
        event = {"v": SCHEMA_VERSION, "kind": kind, "time": round(time.time(), 3), **fields}
        try:  # most events hold finite numbers only: written as they are, without a copy
            line = json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n"
        except (ValueError, TypeError):  # NaN/Inf (written "nan", "inf"), or keys that are not strings
            line = json.dumps(json_safe(event), separators=(",", ":"), allow_nan=False) + "\n"
        if self._held is not None:
            self._held.append(line)
            return
        self._file.write(line)
        now = time.monotonic()
        if kind in self.URGENT or now - self._last_flush >= self.flush_seconds:
            self.flush()

    def write_event(self, event: dict[str, Any]) -> None:
        """Write one event given as a dict with its ``kind``."""
        fields = {k: v for k, v in event.items() if k != "kind"}
        self.write(str(event["kind"]), **fields)

    def flush(self) -> None:
        """Push buffered events to the operating system."""
        if self._file is not None:
            self._file.flush()
            self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close; later writes are ignored. Before :meth:`release`: close without writing (a file this
        writer created is removed)."""
        if self._file is None:
            return
        handle, self._file = self._file, None
        abandoned = self._held is not None
        try:
            if not abandoned:
                handle.flush()
        finally:
            handle.close()
            if abandoned and self._created:
                self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class LogProblem:
    """A line of a run log that could not be read."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class LogFormatError(ValueError):
    """The file is not a gradprobe run log at all."""


def iter_events(
    path: str | os.PathLike[str],
    problems: list[LogProblem] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream the events of a run log, one dict at a time.

    Corrupt lines (and a truncated last line) are skipped and, when
    ``problems`` is given, appended to it with their line numbers.
    ``progress`` is called with the number of bytes read, about every MiB.

    Raises:
        LogFormatError: The file cannot be opened, or its first readable
            line is not a gradprobe event of a supported schema version.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed in finally below
    except OSError as exc:
        raise LogFormatError(f"cannot open {path}: {exc.strerror or exc}") from None
    seen_valid = False
    pending = 0
    _, _, decode_known = fast_lines.readers()
    try:
        for number, raw in enumerate(handle, start=1):
            if progress is not None:
                pending += len(raw)
                if pending >= 1 << 20:
                    progress(pending)
                    pending = 0
            if decode_known is not None:
                event = decode_known(raw)  # a frequent kind, checked against the schema as it is decoded
                if event is not None and event["v"] == SCHEMA_VERSION:
                    seen_valid = True
                    yield event
                    continue
            if raw.isspace():
                continue
            try:
                event = parse_line(raw)
                if type(event) is not dict or "kind" not in event or "v" not in event:
                    raise ValueError("not a gradprobe event (no 'v'/'kind')")
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: JSON nested too deep
                truncated = not raw.endswith(b"\n")
                if not seen_valid and number == 1 and (b"\x00" in raw or isinstance(exc, UnicodeDecodeError)):
                    raise LogFormatError(f"{path} is not a gradprobe run log (binary data)") from None
                if not seen_valid and number == 1 and not truncated:
                    raise LogFormatError(f"{path} is not a gradprobe run log (line 1: {_short(exc)})") from None
                if problems is not None:
                    problems.append(
                        LogProblem(number, "truncated last line" if truncated else f"corrupt line ({_short(exc)})")
                    )
                continue
            if event["v"] != SCHEMA_VERSION:
                if not seen_valid:
                    raise LogFormatError(f"{path}: unsupported log schema version {event['v']!r}")
                if problems is not None:
                    problems.append(LogProblem(number, f"unsupported schema version {event['v']!r}"))
                continue
            seen_valid = True
            problem = schema_problem(event)
            if problem is not None:
                if problems is not None:
                    problems.append(LogProblem(number, strip_control(problem, keep="")))
                continue
            yield event
    finally:
        handle.close()
        if progress is not None and pending:
            progress(pending)


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 80 else text[:77] + "..."
