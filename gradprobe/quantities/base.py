"""The interface every quantity keeps, and what it is given on a step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gradprobe.recorders.capture import CallCapture


class Emit(Protocol):
    """Publish one event (``kind`` plus its fields) to the log, the rules and the sinks."""

    def __call__(self, kind: str, **fields: Any) -> None: ...


@dataclass
class StepContext:
    """What a quantity may read on one training step.

    Attributes:
        step: The training step (0-based).
        mode: The capture mode of the step (``deep``, ``sample`` or ``off``).
        capture: The calls the forward hooks captured on this step.
        emit: Where the quantity publishes its events.
        grad_scale: The AMP loss scale the backward pass ran under: captured
            gradients are divided by it (1.0 without AMP).
    """

    step: int
    mode: str
    capture: CallCapture
    emit: Emit
    grad_scale: float = 1.0


class Quantity(Protocol):
    """One measurement with its own schedule (the modes it runs in)."""

    #: The capture modes (:data:`~gradprobe.recorders.capture.DEEP`, ``SAMPLE``) on which it computes.
    modes: frozenset[str]

    def compute(self, context: StepContext) -> None:
        """Measure from the captured calls and emit the events."""
        ...
