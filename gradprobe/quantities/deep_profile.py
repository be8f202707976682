"""The deep probe: per-step gradient norms, the propagation profile, Jacobian norms and horizon of every track."""

from __future__ import annotations

from torch import Tensor

from gradprobe.discovery import RecurrentSite
from gradprobe.quantities.base import LayerProfile, Quantity, QuantitySetup, StepContext
from gradprobe.quantities.saturation import emit_saturation
from gradprobe.recorders import propagation, sweep
from gradprobe.recorders.capture import DEEP, StackCall
from gradprobe.recorders.replay import StackReplayer, Track, weights_in_use
from gradprobe.recorders.saturation import output_gates


class DeepProfile(Quantity):
    """On deep steps: replays every captured layer and measures how gradients travel through time.

    It reads the settings ``deep_rows``, ``spectral_rows``, ``spectral_steps``, ``lyapunov_k`` and ``epsilon``,
    draws its random projections and Lanczos starts from the probe's private generator, and keeps the latest
    profile per track in the shared ``setup.profiles``.
    """

    modes = frozenset({DEEP})

    def __init__(self, setup: QuantitySetup) -> None:
        self.sites = setup.sites
        self.replayers = setup.replayers
        self.settings = setup.settings
        self.generator = setup.generator
        self.paused = setup.paused
        #: Latest profile per track name.
        self.layers = setup.profiles

    def release(self) -> None:
        self.sites = []

    def compute(self, context: StepContext) -> None:
        """Measure every layer captured on this deep step."""
        for site in self.sites:
            chain = context.record.stack_calls.get(site.name) if site.kind == "stack" else None
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
            chain = context.record.stack_calls.get(site.name)
            return self.replayers.stack(site.name).replay_chain(chain) if chain else []
        calls = context.record.cell_calls.get(site.name)
        if calls is None or not calls.inputs or calls.whole_sequence is not None:  # sequence-level: SequenceProfile
            return []
        return [self.replayers.cell(site.name).replay(calls, self.paused)]

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
