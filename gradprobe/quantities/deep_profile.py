"""The deep probe: per-step gradient norms, the propagation profile, Jacobian norms and horizon of every track."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradprobe.discovery import RecurrentSite
from gradprobe.quantities.base import StepContext
from gradprobe.quantities.saturation import emit_saturation
from gradprobe.recorders import propagation, sweep
from gradprobe.recorders.capture import DEEP, StackCall
from gradprobe.recorders.replay import SiteReplayers, StackReplayer, Track, weights_in_use
from gradprobe.recorders.saturation import output_gates


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


class DeepProfile:
    """On deep steps: replays every captured layer and measures how gradients travel through time.

    Args:
        sites: The recurrent layers.
        replayers: Their replayers.
        settings: The probe settings (``deep_rows``, ``spectral_rows``, ``spectral_steps``, ``epsilon``).
        generator: The probe's private random generator (random projections, Lanczos starts).
        pause: Pauses the capture hooks while cells are re-run.
    """

    modes = frozenset({DEEP})

    def __init__(
        self,
        sites: list[RecurrentSite],
        replayers: SiteReplayers,
        settings: Any,
        generator: torch.Generator,
        pause: Callable[[bool], None],
    ) -> None:
        self.sites = sites
        self.replayers = replayers
        self.settings = settings
        self.generator = generator
        self.pause = pause
        #: Latest profile per track name.
        self.layers: dict[str, LayerProfile] = {}

    def compute(self, context: StepContext) -> None:
        for site in self.sites:
            chain = context.capture.stack_calls.get(site.name) if site.kind == "stack" else None
            if chain and len(chain) == 1:
                replayer = self.replayers.stack(site.name)
                if sweep.supported(replayer.twin, chain[0], next(site.module.parameters()).dtype):
                    self._sweep(site, replayer, chain[0], context)
                    continue
            for track in self._replay(site, context):
                self._analyze(site, track, context)

    def _sweep(self, site: RecurrentSite, replayer: StackReplayer, call: StackCall, context: StepContext) -> None:
        """One batched call (padded or packed) of a built-in stack: one forward pass and one backward sweep per direction."""
        s = self.settings
        params = weights_in_use(site.module)
        rows = max(s.deep_rows, s.spectral_rows)
        measured = sweep.sweep_stack(
            replayer.twin, site.tracks, call, params, s.deep_rows, s.lyapunov_k, self.generator, rows
        )
        for direction in measured:
            run, result = direction.run, direction.result
            r = run.x_head.shape[1]
            previous: tuple[Tensor, ...] = (run.chronological(run.h[:-1, :r]),)
            if run.c is not None:
                previous += (run.chronological(run.c[:-1, :r]),)
            lin = propagation.TrackLinearization.analytic(
                run.mode, run.weights, run.chronological(run.x_head), previous, run.reverse, gates=run.head_gates(r)
            )
            self._emit(
                site,
                context,
                name=run.name,
                mode=run.mode,
                batch=int(run.h.shape[1]),
                grad_norms=result.grad_norms,
                profile=result.profile,
                lin=lin,
                lyapunov=result.lyapunov,
                chained=True,
                gates=lin.first_rows(s.deep_rows).gates,
            )

    def _replay(self, site: RecurrentSite, context: StepContext) -> list[Track]:
        if site.kind == "stack":
            chain = context.capture.stack_calls.get(site.name)
            return self.replayers.stack(site.name).replay_chain(chain) if chain else []
        calls = context.capture.cell_calls.get(site.name)
        if calls is None or not calls.inputs or calls.whole_sequence is not None:  # sequence-level: SequenceProfile
            return []
        return [self.replayers.cell(site.name).replay(calls, self.pause)]

    def _analyze(self, site: RecurrentSite, track: Track, context: StepContext) -> None:
        s = self.settings
        lin = propagation.TrackLinearization(track, max(s.deep_rows, s.spectral_rows))
        profile = propagation.propagation_profile(lin.first_rows(s.deep_rows), self.generator)
        lyapunov = (
            propagation.lyapunov_spectrum(lin.first_rows(1), s.lyapunov_k, self.generator) if s.lyapunov_k else []
        )
        gates = lin.first_rows(s.deep_rows).gates
        if gates is None and track.mode is None:  # a custom cell: saturation of its bounded outputs
            gates = output_gates([state[0][: s.deep_rows] for state in track.states])
        self._emit(
            site,
            context,
            name=track.name,
            mode=track.mode,
            batch=int(track.states[0][0].shape[0]),
            grad_norms=propagation.gradient_norms(track),
            profile=profile,
            lin=lin,
            lyapunov=lyapunov,
            chained=track.chained,
            gates=gates,
        )

    def _emit(
        self,
        site: RecurrentSite,
        context: StepContext,
        *,
        name: str,
        mode: str | None,
        batch: int,
        grad_norms: list[float],
        profile: list[float],
        lin: propagation.TrackLinearization,
        lyapunov: list[float],
        chained: bool,
        gates: dict[str, Tensor] | None,
    ) -> None:
        """Finish one track: Jacobian norms and decay fit, then the deep and saturation events and the record."""
        s = self.settings
        if context.grad_scale != 1.0:
            grad_norms = [v / context.grad_scale for v in grad_norms]
        jacobians = propagation.jacobian_norms(lin.first_rows(s.spectral_rows), s.spectral_steps, self.generator)
        rate, horizon = propagation.fit_decay(profile, s.epsilon)
        event = {
            "step": context.step,
            "layer": name,
            "module": site.name,
            "mode": mode,
            "seq_len": lin.steps,
            "batch": batch,
            "grad_norms": grad_norms,
            "profile": profile,
            "jacobian_norms": jacobians,
            "rate": rate,
            "horizon": horizon,
            "epsilon": s.epsilon,
            "chained": chained,
            "lyapunov": lyapunov,
        }
        context.emit("deep", **event)
        record = LayerProfile.from_event(event)
        if gates is not None:
            record.saturation = emit_saturation(context.emit, context.step, name, mode, gates, deep=True)
        self.layers[name] = record
