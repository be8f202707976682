"""The probe: attach to a recurrent model, record every step, probe deeply every ``every`` steps.

Usage::

    with gradprobe.attach(model, log="run.log", every=50, optimizer=opt) as probe:
        for x, y in data:
            opt.zero_grad()
            crit(model(x)[0], y).backward()
            opt.step()                # one probe step (its hooks); clipping in between is seen
    print(probe.findings)

Without ``optimizer=``, call ``probe.step(loss)`` after ``backward`` and before
``optimizer.step()``.

The probe never changes a forward result, a gradient or the random stream of
the training it observes (with ``fix="off"``), and never raises into it. Every
part fails alone, reported once (a :class:`GradprobeWarning`, and an event in
the log while the log works):

- a sink, a plugin hook or the run log (disk full) that raises is switched
  off alone (a ``fault`` event); measuring and the other consumers go on;
- the rules: switched off, measuring goes on;
- measuring itself (hooks, replay): the probe removes its hooks and
  disables itself (an ``error`` event) while training goes on.

A step goes: the schedule picks the capture mode (no deeper than some quantity
needs); the forward hooks capture; after backward the capture hands over a
frozen :class:`~gradprobe.recorders.capture.StepRecord`; the step statistics
and then every quantity turn it into events; each event leaves through the
one :class:`~gradprobe.bus.EventRouter` (log, sinks, plugin hooks, rules).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
from torch import Tensor, nn

from gradprobe import distributed
from gradprobe.bus import EventRouter, Judge, Sink
from gradprobe.discovery import RecurrentSite, adapters_from, find_recurrent, unwrap
from gradprobe.events import EventWriter
from gradprobe.faults import GradprobeWarning, short, warn
from gradprobe.findings import Finding
from gradprobe.probe_clock import ProbeClock
from gradprobe.quantities import BudgetSchedule, LayerProfile, Quantity, Schedule, StepContext, StepStatistics
from gradprobe.quantities.base import Emit, QuantitySetup
from gradprobe.quantities.registry import BUILT_IN, QuantityFactory, build
from gradprobe.quantities.truncation import TruncationWindows
from gradprobe.recorders.capture import OFF, CallCapture, CaptureMode
from gradprobe.recorders.gradients import GradientRecorder
from gradprobe.recorders.optimizer_loop import LoopStep, OptimizerLoop
from gradprobe.recorders.replay import SiteReplayers
from gradprobe.run_meta import meta_fields
from gradprobe.settings import ProbeSettings
from gradprobe.unmeasured import rules_off_finding, unmeasured_tracks, why_unmeasured

if TYPE_CHECKING:
    from typing_extensions import Self


Q = TypeVar("Q", bound=Quantity)


__all__ = ["Fixer", "FixerFactory", "GradprobeWarning", "LayerProfile", "Probe", "ProbeSettings"]


class Fixer(Protocol):
    """Per-step fixes run after each recorded backward (:class:`gradprobe.fixes.runtime.StepFixer`)."""

    def after_backward(
        self, step: int, record: dict[str, Any], nonfinite: dict[str, Any] | None, loss: float | None = None
    ) -> None:
        """Act on the step's gradient record (clip, skip a non-finite update), emitting ``fix`` events."""
        ...

    def release(self) -> None:
        """Remove its hooks and references."""
        ...


#: Builds the fixer of a run from the model, the fix mode and the probe's emit.
FixerFactory = Callable[[nn.Module, str, Emit], Fixer]


class Probe:
    """Hooks on a model's recurrent layers; see :func:`gradprobe.attach`.

    Args:
        model: The model (wrappers such as DDP are looked through).
        log: Path of the JSON Lines run log, or ``None``.
        settings: The measuring knobs.
        cells: Custom cells (modules or qualified names) to probe.
        rules: The rule engine judging the events (:class:`gradprobe.rules.engine.RuleEngine`).
        sinks: Callables receiving every event.
        optimizer: The training optimizer (its step hooks record the steps).
        scaler: The AMP ``GradScaler``, if used.
        fixer: Builds the per-step fixer when ``settings.fix`` is not ``off``.
        quantities: The quantities to measure (default: the built-in ones).
    """

    def __init__(
        self,
        model: nn.Module,
        log: str | os.PathLike[str] | None = None,
        settings: ProbeSettings | None = None,
        cells: Iterable[str | nn.Module] = (),
        *,
        rules: Judge,
        sinks: Sequence[Sink] = (),
        optimizer: torch.optim.Optimizer | None = None,
        scaler: Any = None,
        fixer: FixerFactory | None = None,
        quantities: tuple[QuantityFactory, ...] = BUILT_IN,
    ) -> None:
        self.settings = settings or ProbeSettings()
        model = unwrap(model)
        self.sites: list[RecurrentSite] = find_recurrent(model, cells, adapters_from(rules.call_hook))
        self.model: nn.Module | None = model
        self.rules = rules
        self.step_index = 0
        self.disabled = False
        self.closed = False
        self.error: str | None = None
        #: The exception that switched measuring off (for ``raise ... from``).
        self.exception: BaseException | None = None
        #: ``(layer, tracks)`` of every attached layer, kept after detaching for the "not measured" findings.
        self._attached = [(site.name, list(site.tracks)) for site in self.sites]
        self.schedule = self._schedule()
        #: The probe's own time in the current step, every hook included (``every="auto"`` prices it).
        self._clock = ProbeClock()
        self._router = self._open_router(rules, log, sinks)
        self._profiles: dict[str, LayerProfile] = {}
        self._failures: dict[str, str] = {}  # per site, why a quantity stopped measuring it
        self._capture = CallCapture(self.sites, self._guard, self.settings.sample_rows)
        self._gradients: GradientRecorder | None = None
        self._replayers: SiteReplayers | None = None
        self._quantities: list[Quantity] = []
        self._fixer: Fixer | None = None
        self._loop: OptimizerLoop | None = None
        try:
            self._start(model, optimizer, scaler, fixer, quantities)
        except BaseException:
            self._detach()
            self._router.close()
            raise
        self._router.release_log()

    def _open_router(self, rules: Judge, log: str | os.PathLike[str] | None, sinks: Sequence[Sink]) -> EventRouter:
        """The router, with the run log when it can be opened; a log that cannot (a read-only folder, a path
        that is a folder) is switched off like a log whose disk fills up: one warning, the run goes on."""
        if not log:
            return EventRouter(rules, None, sinks)
        path = distributed.log_path_for_this_rank(log)
        try:
            writer = EventWriter(path, self.settings.flush_seconds, hold=True)
        except OSError as exc:
            router = EventRouter(rules, None, sinks)
            router.switched_off(f"the run log {path}", f"opening: {short(exc)}")
            return router
        if writer.moved_from is not None:
            warn(
                f"gradprobe: {writer.moved_from} is being written by another run (another process or probe); "
                f"this run writes {writer.path}",
                stacklevel=5,
            )
        return EventRouter(rules, writer, sinks)

    def _schedule(self) -> Schedule:
        s = self.settings
        if s.every == "auto":
            return BudgetSchedule(s.budget, s.saturation_every)
        return Schedule(int(s.every), s.saturation_every)

    @property
    def every(self) -> int:
        """The deep-probe interval in force (chosen by the probe with ``every="auto"``)."""
        return self.schedule.every

    def _start(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scaler: Any,
        fixer: FixerFactory | None,
        quantities: tuple[QuantityFactory, ...],
    ) -> None:
        gradients = self._gradients = GradientRecorder(model, self.sites)
        self._replayers = SiteReplayers(self.sites)
        generator = torch.Generator().manual_seed(self.settings.seed)
        setup = QuantitySetup(
            self.sites,
            self.settings,
            generator,
            self._replayers,
            self._capture.paused,
            self._profiles,
            gradients,
            self._failures,
        )
        self._quantities = build(setup, quantities)
        self._needed = frozenset({OFF}).union(*(q.asks() for q in self._quantities))
        self._router.emit("meta", **meta_fields(model, self.sites, self.settings, self.rules, optimizer))
        self._router.publish_findings(
            self._router.judged("linting the model", lambda: self.rules.lint(model, self.sites, keep=True))
        )
        if self.settings.fix != "off" and fixer is not None:
            self._fixer = fixer(model, self.settings.fix, self._router.emit)
        if optimizer is not None:
            self._loop = OptimizerLoop(
                optimizer, model, gradients.measure, self._optimizer_step, self._guard, scaler, self._may_defer
            )
        self._capture.start_step(self._mode_for(0))
        if isinstance(self.schedule, BudgetSchedule):
            self.schedule.start()

    def _may_defer(self, mode: CaptureMode | None = None) -> bool:
        """Whether a step's figures may stay on the device until they are read with others: a step captured
        ``off`` (``mode``, by default the current step's), with no fix that acts on each step's gradients."""
        return (self._capture.mode if mode is None else mode) == OFF and self._fixer is None

    def _mode_for(self, step: int) -> CaptureMode:
        """The schedule's mode for ``step``, no deeper than some quantity needs."""
        mode = self.schedule.mode_for(step)
        return mode if mode in self._needed else OFF

    # -- public API -------------------------------------------------------------

    def step(self, loss: Tensor | float | None = None) -> None:
        """Record the step whose ``backward`` just ran. Call before ``optimizer.step()``.

        With ``attach(optimizer=...)`` the optimizer's step records the step
        itself; this call then only hands over ``loss`` for it (optional: the
        loss is otherwise taken from the backward pass).
        """
        if self.closed:
            raise RuntimeError("probe.step() called after close()")
        if self._loop is not None:
            loop = self._loop
            self._guard("probe.step", lambda: loop.hand_over(loss))
            return
        self._guard("probe.step", lambda: self._record(loss))
        self._advance(self._clock.take())

    def _optimizer_step(self, observed: LoopStep) -> None:
        """One optimizer step (optimizer hooks): record it like ``probe.step`` with what the loop did."""
        if self.closed:
            return
        self._guard("the optimizer step", lambda: self._record(observed.loss, observed))
        self._advance(self._clock.take())

    def _advance(self, probe_seconds: float) -> None:
        if not self.disabled:
            schedule, mode, step = self.schedule, self._capture.mode, self.step_index
            self._guard("scheduling", lambda: self._reschedule(schedule.observe(step, mode, probe_seconds)))
        self.step_index += 1
        self._router.step = self.step_index
        if not self.disabled:
            self._capture.start_step(self._mode_for(self.step_index))

    def _reschedule(self, chosen: dict[str, Any] | None) -> None:
        if chosen is not None:
            self._router.emit("schedule", **chosen)

    def log_fix(self, name: str, applied: bool = True, **detail: Any) -> None:
        """Record a remedy applied outside the probe (e.g. :class:`gradprobe.fixes.HiddenGradClip`).

        It becomes a ``fix`` event in the log and for the rules (a name starting
        with ``clip`` counts as clipping in place). Never raises.
        """
        if self.closed:
            return
        emit = self._router.emit
        self._guard(
            "logging a fix",
            lambda: emit("fix", step=self.step_index, name=str(name), applied=bool(applied), detail=detail),
        )

    @property
    def findings(self) -> list[Finding]:
        """Findings so far (all of them once the probe is closed). Never raises.

        When the rules were switched off after an error, nothing can be judged:
        every attached layer is then reported not measured (GP001), never healthy.
        """
        self._read_waiting_steps()
        found = self._router.judged("gathering findings", self.rules.findings)
        error = self._router.rules_error
        if error is not None:
            return [rules_off_finding(layer, tracks, self.step_index, error) for layer, tracks in self._attached]
        return found if found is not None else []

    @property
    def rules_error(self) -> str | None:
        """Why the rules were switched off, once they were."""
        return self._router.rules_error

    @property
    def faults(self) -> dict[str, str]:
        """Parts of the probe switched off after an error, with the reason."""
        out = self._router.faults
        if self.error is not None:
            out["measuring"] = self.error
        return out

    @property
    def log_path(self) -> Path | None:
        """Where the run log goes (``run.1.log`` when another run held the path asked for); ``None`` without one."""
        writer = self._router.writer
        return writer.path if writer is not None else None

    @property
    def layers(self) -> dict[str, LayerProfile]:
        """Latest deep-probe profile of every track, by track name."""
        return dict(self._profiles)

    def quantity(self, kind: type[Q]) -> Q | None:
        """The running quantity of class ``kind`` (e.g. :class:`~gradprobe.quantities.truncation.TruncationWindows`),
        or ``None`` when none runs."""
        return next((q for q in self._quantities if isinstance(q, kind)), None)

    @property
    def truncation(self) -> int | None:
        """The loop's truncated-BPTT window: declared with ``attach(truncation=)``, else detected, else ``None``."""
        if self.settings.truncation is not None:
            return self.settings.truncation
        windows = self.quantity(TruncationWindows)
        return windows.window if windows is not None else None

    def close(self) -> None:
        """Finish the rules, write the findings, remove every hook and reference. Idempotent; never raises."""
        if self.closed:
            return
        self.closed = True
        try:
            self._read_waiting_steps()
            self._guard("reporting unmeasured layers", self._report_unmeasured)
            self._router.publish_findings(self._router.judged("finishing", self.rules.finish))
        finally:
            self._detach()
            self._router.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- recording --------------------------------------------------------------

    def _read_waiting_steps(self) -> None:
        """Emit the steps whose figures still wait on the device (see :class:`StepStatistics`)."""
        statistics = self.quantity(StepStatistics)
        if statistics is not None:
            self._guard("reading the waiting steps", statistics.flush)

    def _report_unmeasured(self) -> None:
        """An ``unmeasured`` event for every attached layer no deep step could measure (GP001), with the reason."""
        if self.step_index == 0:
            return  # no step was recorded: GP002 speaks for the run
        statistics = self.quantity(StepStatistics)
        for site, missing in unmeasured_tracks(self.sites, self._profiles):
            got_gradients = statistics is not None and statistics.got_gradients(site)
            reason = self._failures.get(site.name) or why_unmeasured(
                site, self._capture.seen(site.name), got_gradients, self.schedule.every
            )
            self._router.emit("unmeasured", step=self.step_index - 1, layer=site.name, tracks=missing, reason=reason)

    def _record(self, loss: Tensor | float | None, observed: LoopStep | None = None) -> None:
        captured = self._capture.take()
        scale = observed.grad_scale if observed is not None else 1.0
        context = StepContext(
            self.step_index,
            captured.mode,
            captured,
            self._router.emit,
            scale,
            loss=loss,
            loop=observed,
            may_defer=self._may_defer(captured.mode),
        )
        statistics = self.quantity(StepStatistics)  # first: whether the step had non-finite values
        if statistics is not None:
            statistics.compute(context)
        figures = statistics.latest if statistics is not None else None
        nonfinite = figures is not None and figures.nonfinite is not None
        for quantity in self._quantities:
            # nothing to learn from replaying NaN/Inf; GP103 reports the step
            runs = quantity is not statistics and captured.mode in quantity.modes
            if runs and (not nonfinite or quantity.on_nonfinite_steps):
                quantity.compute(context)
        if self._fixer is not None and figures is not None:
            self._fixer.after_backward(self.step_index, figures.gradients, figures.nonfinite, figures.loss)

    # -- errors, detaching ---------------------------------------------------------

    def _guard(self, where: str, body: Callable[[], None]) -> None:
        if self.disabled:
            return
        self._clock.enter()
        try:
            body()
        except Exception as exc:  # noqa: BLE001 - the probe must never break training
            self._fail(where, exc)
        finally:
            self._clock.leave()

    def _fail(self, where: str, exc: BaseException) -> None:
        if self.error is not None:
            return
        self.error = f"{where}: {short(exc)}"
        self.exception = exc
        self.disabled = True
        warn(f"gradprobe disabled itself after an error in {self.error}", stacklevel=4)
        # the rules see it too: every attached layer is reported not measured (GP001), never healthy
        self._router.emit("error", step=self.step_index, where=where, message=short(exc))
        self._router.flush_log()
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        """Every hook on the model, the optimizer and autograd, and the captured tensors."""
        if self._loop is not None:
            self._loop.remove()
            self._loop = None
        self._capture.remove()

    def _detach(self) -> None:
        self._remove_hooks()
        if self._gradients is not None:
            self._gradients.release()
        if self._replayers is not None:
            self._replayers.release()
        for quantity in self._quantities:
            quantity.release()
        if self._fixer is not None:
            self._fixer.release()
            self._fixer = None
        self.sites = []
        self.model = None
