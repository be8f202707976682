"""The deep probe of modules whose one call covers a whole sequence: measured through their inputs.

See :mod:`gradprobe.recorders.sequence_replay`. The ``deep`` event of such a
layer carries ``profile_kind: "input"``: its profile is
``||v^T dy_T / dx_(T-k)||`` in the input space, its horizon and decay rate are
read from it as from a state profile, and it has no Jacobian norms or
Lyapunov exponents (they need the state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradprobe.discovery import RecurrentSite
from gradprobe.quantities.base import StepContext
from gradprobe.quantities.deep_profile import LayerProfile
from gradprobe.quantities.saturation import emit_saturation
from gradprobe.recorders import propagation
from gradprobe.recorders.capture import DEEP
from gradprobe.recorders.saturation import output_gates
from gradprobe.recorders.sequence_replay import measure_sequence

#: ``LayerProfile.profile_kind`` of a layer measured through its inputs.
INPUT_PROFILE = "input"


class SequenceProfile:
    """On deep steps: replays the latest sequence-level call of each named cell and measures it at the sequence level.

    Args:
        sites: The recurrent layers (only cells are looked at).
        settings: The probe settings (``deep_rows``, ``epsilon``).
        generator: The probe's private random generator.
        pause: Pauses the capture hooks while a call is replayed.
        layers: Where the latest profile of each track is kept (shared with :class:`DeepProfile`).
    """

    modes = frozenset({DEEP})

    def __init__(
        self,
        sites: list[RecurrentSite],
        settings: Any,
        generator: torch.Generator,
        pause: Callable[[bool], None],
        layers: dict[str, LayerProfile],
    ) -> None:
        self.sites = [site for site in sites if site.kind == "cell"]
        self.settings = settings
        self.generator = generator
        self.pause = pause
        self.layers = layers

    def compute(self, context: StepContext) -> None:
        s = self.settings
        for site in self.sites:
            calls = context.capture.cell_calls.get(site.name)
            sequence = calls.whole_sequence if calls is not None else None
            if calls is None or sequence is None:
                continue
            measured = measure_sequence(site.module, sequence, self.generator, self.pause, s.deep_rows)
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
