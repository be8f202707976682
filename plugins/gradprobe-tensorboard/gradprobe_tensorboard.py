"""Stream gradprobe events to TensorBoard.

Two ways in: pass a :class:`TensorBoardSink` to ``gradprobe.attach(...,
sinks=[...])``, or install this distribution and set
``GRADPROBE_TENSORBOARD_DIR``: the ``gradprobe_event_written`` hook then
writes every probe's events there.
"""

from __future__ import annotations

import atexit
import math
import os
import warnings
from typing import Any

import gradprobe
from gradprobe.events import finite_number
from gradprobe.hookspecs import hookimpl

ENV = "GRADPROBE_TENSORBOARD_DIR"


class TensorBoardSink:
    """Turns gradprobe events into TensorBoard scalars and text.

    Without the ``tensorboard`` package the sink warns once and does nothing
    (never an exception into training).

    Args:
        log_dir: Where a ``torch.utils.tensorboard.SummaryWriter`` writes.
        writer: Any object with ``add_scalar(tag, value, step)``,
            ``add_text(tag, text, step)``, ``add_histogram(tag, values, step)``
            and ``flush()`` (tests pass a fake).
        prefix: Tag prefix.
    """

    def __init__(self, log_dir: str | None = None, writer: Any = None, prefix: str = "gradprobe") -> None:
        if writer is None:
            writer = _summary_writer(log_dir)
        self.writer = writer
        self.prefix = prefix
        self.fixes: dict[str, int] = {}
        self.last_step = 0

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        number = finite_number(value)
        if number is not None:
            self.writer.add_scalar(f"{self.prefix}/{tag}", number, step)

    def _histogram(self, tag: str, values: list[Any], step: int, log10: bool = False) -> None:
        numbers = [n for n in (finite_number(v) for v in values) if n is not None and (not log10 or n > 0)]
        if numbers and hasattr(self.writer, "add_histogram"):
            import numpy as np

            array = np.log10(np.asarray(numbers)) if log10 else np.asarray(numbers)
            self.writer.add_histogram(f"{self.prefix}/{tag}", array, step)

    def close(self) -> None:
        """Flush and close the writer (idempotent)."""
        writer, self.writer = self.writer, None
        if writer is not None and hasattr(writer, "close"):
            writer.close()

    def __call__(self, event: dict[str, Any]) -> None:
        if self.writer is None:
            return
        kind = event.get("kind")
        step = int(event.get("step") or self.last_step)
        if kind == "step":
            self.last_step = step
            self._scalar("loss", event.get("loss"), step)
            self._scalar("grad_norm", event.get("grad_norm"), step)
            for name, norm in (event.get("params") or {}).items():
                self._scalar(f"grad_norm/{name}", norm, step)
            for name, gates in (event.get("gates") or {}).items():
                for gate, norm in gates.items():
                    self._scalar(f"gates/{name}/{gate}", norm, step)
        elif kind == "deep":
            layer = event["layer"]
            self._scalar(f"{layer}/horizon", event.get("horizon"), step)
            rate = finite_number(event.get("rate"))
            if rate is not None:
                self._scalar(f"{layer}/decay_per_step", math.exp(rate), step)
            norms = [n for n in (finite_number(v) for v in event.get("jacobian_norms") or []) if n is not None]
            if norms:
                self._scalar(f"{layer}/jacobian_norm_mean", sum(norms) / len(norms), step)
            self._histogram(f"{layer}/profile_log10", event.get("profile") or [], step, log10=True)
            self._histogram(f"{layer}/grad_norms_log10", event.get("grad_norms") or [], step, log10=True)
            self._histogram(f"{layer}/jacobian_norms", norms, step)
        elif kind == "saturation":
            for gate, share in (event.get("fractions") or {}).items():
                self._scalar(f"{event['layer']}/saturation/{gate}", share, step)
        elif kind == "fix" and event.get("applied"):
            name = str(event.get("name"))
            self.fixes[name] = self.fixes.get(name, 0) + 1
            self._scalar(f"fixes/{name}", self.fixes[name], step)
        elif kind == "finding":
            text = f"{event.get('code')} {event.get('name')} [{event.get('severity')}] {event.get('layer') or ''}: {event.get('message')}"
            self.writer.add_text(f"{self.prefix}/findings", text, step)
        elif kind == "error":
            self.writer.add_text(f"{self.prefix}/errors", str(event.get("message")), step)
        if kind in ("deep", "finding", "error"):
            self.writer.flush()


def _summary_writer(log_dir: str | None) -> Any:
    """A ``SummaryWriter``, or ``None`` with one warning when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        message = f"gradprobe-tensorboard writes nothing: the 'tensorboard' package cannot be imported ({exc}); pip install tensorboard"
        warnings.warn(message, gradprobe.GradprobeWarning, stacklevel=4)
        return None
    return SummaryWriter(log_dir)


#: The sink of ``$GRADPROBE_TENSORBOARD_DIR``, with its folder: one per folder at a time, closed when the
#: folder changes and at exit.
_shared: tuple[str, TensorBoardSink] | None = None


def _close_shared() -> None:
    global _shared
    shared, _shared = _shared, None
    if shared is not None:
        shared[1].close()


atexit.register(_close_shared)


@hookimpl
def gradprobe_event_written(event: dict[str, Any]) -> None:
    """Write every probe's events to ``$GRADPROBE_TENSORBOARD_DIR`` when it is set."""
    global _shared
    folder = os.environ.get(ENV)
    if not folder:
        return
    if _shared is None or _shared[0] != folder:
        _close_shared()
        _shared = (folder, TensorBoardSink(folder))
    _shared[1](event)
