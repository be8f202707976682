"""The deep probe of modules whose one call covers a whole sequence: measured through their inputs.

See :mod:`gradprobe.recorders.sequence_replay`. The ``deep`` event of such a
layer carries ``profile_kind: "input"``: its profile is
``||v^T dy_T / dx_(T-k)||`` in the input space, its horizon and decay rate are
read from it as from a state profile, and it has no Jacobian norms or
Lyapunov exponents (they need the state).
"""

from __future__ import annotations

from gradprobe.quantities.base import LayerProfile, Quantity, QuantitySetup, StepContext
from gradprobe.quantities.saturation import emit_saturation
from gradprobe.recorders import propagation
from gradprobe.recorders.capture import DEEP
from gradprobe.recorders.saturation import output_gates
from gradprobe.recorders.sequence_replay import measure_sequence

#: ``LayerProfile.profile_kind`` of a layer measured through its inputs.
INPUT_PROFILE = "input"


class SequenceProfile(Quantity):
    """On deep steps: replays the latest sequence-level call of each named cell and measures it at the sequence level.

    It reads the setup's ``settings.deep_rows`` and ``settings.epsilon``, and keeps its profiles in the shared
    ``setup.profiles``.
    """

    modes = frozenset({DEEP})

    def __init__(self, setup: QuantitySetup) -> None:
        self.sites = [site for site in setup.sites if site.kind == "cell" and site.adapter is None]  # adapted: exact
        self.settings = setup.settings
        self.generator = setup.generator
        self.paused = setup.paused
        self.layers = setup.profiles

    def compute(self, context: StepContext) -> None:
        """Measure every cell whose latest call covered a whole sequence."""
        s = self.settings
        for site in self.sites:
            calls = context.record.cell_calls.get(site.name)
            sequence = calls.whole_sequence if calls is not None else None
            if calls is None or sequence is None:
                continue
            measured = measure_sequence(site.module, sequence, self.generator, self.paused, s.deep_rows)
            grad_norms = measured.grad_norms
            if grad_norms is not None and context.grad_scale != 1.0:
                grad_norms = [v / context.grad_scale for v in grad_norms]
            rate, horizon = propagation.fit_decay(measured.profile, s.epsilon)
            event = {
                "step": context.step,
                "layer": site.name,
                "module": site.name,
                "mode": site.mode,
                "seq_len": len(measured.profile),
                "batch": measured.batch,
                "grad_norms": grad_norms if grad_norms is not None else [],
                "profile": measured.profile,
                "jacobian_norms": [],
                "rate": rate,
                "horizon": horizon,
                "epsilon": s.epsilon,
                "chained": True,
                "lyapunov": [],
                "profile_kind": INPUT_PROFILE,
            }
            context.emit("deep", **event)
            record = LayerProfile.from_event(event)
            gates = output_gates([calls.outputs[-1][0]])
            if gates is not None:
                record.saturation = emit_saturation(context.emit, context.step, site.name, site.mode, gates, deep=True)
            self.layers[site.name] = record

    def release(self) -> None:
        self.sites = []
