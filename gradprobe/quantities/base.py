"""The interface every quantity keeps, what it is built from, and what it is given on a step.

A quantity is a small class: it says on which kind of step it runs
(:attr:`Quantity.modes`, its *needs*: the probe captures a step only as deeply
as some quantity needs), and turns the step's frozen
:class:`~gradprobe.recorders.capture.StepRecord` into events. Adding one takes
its own module and one line in :mod:`gradprobe.quantities.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from gradprobe.discovery import RecurrentSite
from gradprobe.event_kinds import Kind
from gradprobe.recorders.capture import CaptureMode, StepRecord
from gradprobe.recorders.gradients import GradientRecorder
from gradprobe.recorders.optimizer_loop import LoopStep
from gradprobe.recorders.replay import SiteReplayers


class Emit(Protocol):
    """Publish one event (``kind`` plus its fields) to the log, the sinks, the plugin hooks and the rules."""

    def __call__(self, kind: Kind, **fields: Any) -> None: ...


@dataclass
class LayerProfile:
    """The latest deep-probe result of one track (layer direction or cell).

    Lists are indexed by time step (``profile`` by distance back from the end).
    """

    name: str
    module: str
    mode: str | None
    step: int
    seq_len: int
    grad_norms: list[float]
    profile: list[float]
    jacobian_norms: list[float]
    rate: float | None
    horizon: float | None
    saturation: dict[str, float] = field(default_factory=dict)
    #: The top Lyapunov exponents of the state dynamics, natural log per step, largest first.
    lyapunov: list[float] = field(default_factory=list)
    #: ``"state"``: the profile ``||v^T dS_T/dS_(T-k)||`` through the layer's state (gradprobe knows its cell math,
    #: or replays its steps); ``"input"``: ``||v^T dy_T/dx_(T-k)||`` through its inputs, for a module whose one call
    #: covers a whole sequence (:mod:`gradprobe.quantities.sequence_profile`).
    profile_kind: str = "state"

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> LayerProfile:
        """The profile a ``deep`` event describes."""
        return cls(
            name=event["layer"],
            module=event.get("module", event["layer"]),
            mode=event.get("mode"),
            step=event["step"],
            seq_len=event["seq_len"],
            grad_norms=list(event["grad_norms"]),
            profile=list(event["profile"]),
            jacobian_norms=list(event["jacobian_norms"]),
            rate=event.get("rate"),
            horizon=event.get("horizon"),
            lyapunov=list(event.get("lyapunov") or []),
            profile_kind=str(event.get("profile_kind") or "state"),
        )


@dataclass(frozen=True)
class QuantitySetup:
    """What every quantity is built from, once per attach.

    Attributes:
        sites: The recurrent layers attached to.
        settings: The probe settings (:class:`gradprobe.probe.ProbeSettings`).
        generator: The probe's private random generator (never the global one).
        replayers: The autograd replayers of the sites.
        paused: A context in which the capture hooks keep nothing (the probe's own replays).
        profiles: The latest deep profile per track, shared by the quantities that measure profiles.
        gradients: Reads the model's parameter gradients (norms per parameter and gate, non-finite ones).
        failures: Per site, why a quantity stopped measuring it (a third-party adapter that raised, say): the
            site is then reported not measured with that reason, while the other sites go on.
    """

    sites: list[RecurrentSite]
    settings: Any
    generator: torch.Generator
    replayers: SiteReplayers
    paused: Callable[[], AbstractContextManager[None]]
    profiles: dict[str, LayerProfile]
    gradients: GradientRecorder
    failures: dict[str, str]


@dataclass(frozen=True)
class StepContext:
    """What a quantity may read on one training step.

    Attributes:
        step: The training step (0-based).
        mode: The capture mode of the step.
        record: The calls the forward hooks captured on this step (frozen).
        emit: Where the quantity publishes its events.
        grad_scale: The AMP loss scale the backward pass ran under: captured
            gradients are divided by it (1.0 without AMP).
        loss: The step's loss, as handed to ``probe.step`` or taken from the backward pass.
        loop: With optimizer hooks, what the loop did between backward and the optimizer.
        may_defer: The step's figures may wait on the device to be read with others' (a cheap step, no fix
            acting on them).
    """

    step: int
    mode: CaptureMode
    record: StepRecord
    emit: Emit
    grad_scale: float = 1.0
    loss: Tensor | float | None = None
    loop: LoopStep | None = None
    may_defer: bool = False


class Quantity:
    """One measurement with its own needs: the capture modes it asks for, and those on which it computes."""

    #: The capture modes on which it computes.
    modes: ClassVar[frozenset[CaptureMode]] = frozenset()
    #: The capture modes it asks the schedule for (default: :attr:`modes`); the probe captures a step no deeper
    #: than some quantity asks. A quantity content with what every step keeps (the sequence bookkeeping) asks none.
    needs: ClassVar[frozenset[CaptureMode] | None] = None

    @classmethod
    def asks(cls) -> frozenset[CaptureMode]:
        """The capture modes it asks for."""
        return cls.modes if cls.needs is None else cls.needs

    #: Whether it also computes on steps with non-finite values (most have nothing to learn from NaN/Inf).
    on_nonfinite_steps: ClassVar[bool] = False

    def compute(self, context: StepContext) -> None:
        """Measure from the step's record and emit the events."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop every reference to the model (on detach)."""
