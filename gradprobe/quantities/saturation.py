"""Gate saturation sampled between deep steps, from a few batch rows of the captured calls."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradprobe.discovery import RecurrentSite
from gradprobe.quantities.base import Emit, Quantity, QuantitySetup, StepContext
from gradprobe.recorders import sweep
from gradprobe.recorders.capture import SAMPLE, CellCalls
from gradprobe.recorders.replay import cell_weights, weights_in_use
from gradprobe.recorders.saturation import output_gates, saturation_fractions, track_gates
from gradprobe.reference import functional as fn


def emit_saturation(
    emit: Emit, step: int, layer: str, mode: str | None, gates: dict[str, Tensor], deep: bool
) -> dict[str, float]:
    """Emit one ``saturation`` event for a track's gate activations; return the fraction per gate."""
    summary = saturation_fractions(gates)
    first = next(iter(gates.values()))
    emit(
        "saturation",
        step=step,
        layer=layer,
        mode=mode,
        **summary,
        units=int(first.shape[-1]),
        samples=int(first.shape[0]),
        deep=deep,
    )
    fractions: dict[str, float] = summary["fractions"]
    return fractions


class SaturationSampling(Quantity):
    """On sampled steps: gate activations of ``rows`` batch rows per layer, recomputed in one batched forward
    pass per layer direction (batched stacks in single or double precision), replayed (other stacks), or
    recomputed from the captured calls (cells).

    It samples ``settings.sample_rows`` batch rows per step.
    """

    modes = frozenset({SAMPLE})

    def __init__(self, setup: QuantitySetup) -> None:
        self.sites = setup.sites
        self.replayers = setup.replayers
        self.rows = int(setup.settings.sample_rows)

    def release(self) -> None:
        self.sites = []

    def compute(self, context: StepContext) -> None:
        """Emit a ``saturation`` event per track sampled on this step."""
        for site in self.sites:
            if site.kind == "stack":
                chain = context.record.stack_calls.get(site.name)
                if not chain:
                    continue
                replayer = self.replayers.stack(site.name)
                if sweep.supported(replayer.twin, chain[-1], next(site.module.parameters()).dtype, gradients=False):
                    # one batched forward pass per layer direction (the top layer's from the call's output)
                    params = weights_in_use(site.module)
                    for run in sweep.sample_stack(replayer.twin, site.tracks, chain[-1], params, self.rows):
                        emit_saturation(
                            context.emit, context.step, run.name, run.mode, run.saturation_gates(), deep=False
                        )
                    continue
                for track in replayer.replay(chain[-1], rows=self.rows):
                    gates = track_gates(track)
                    if gates is not None:
                        emit_saturation(context.emit, context.step, track.name, track.mode, gates, deep=False)
            else:
                calls = context.record.cell_calls.get(site.name)
                if calls is None or not calls.inputs:
                    continue
                if site.mode is not None:
                    emit_saturation(
                        context.emit, context.step, site.name, site.mode, cell_gates(site, calls), deep=False
                    )
                    continue
                gates = output_gates([out[calls.h_position] for out in calls.outputs if len(out) > calls.h_position])
                if gates is not None:
                    emit_saturation(context.emit, context.step, site.name, None, gates, deep=False)


def cell_gates(site: RecurrentSite, calls: CellCalls) -> dict[str, Tensor]:
    """Gate activations of a built-in cell over all its captured calls (no replay needed)."""
    m: Any = site.module
    assert site.mode is not None  # only built-in cells reach here
    weights = cell_weights(m)
    dtype = weights.weight_hh.dtype  # inputs captured under autocast may be half precision
    x = torch.cat(calls.inputs).to(dtype)
    states = []
    for x_t, state in zip(calls.inputs, calls.states_in):
        if not state:
            zeros = x_t.new_zeros(x_t.shape[0], m.hidden_size)
            state = (zeros, zeros) if site.mode == "LSTM" else (zeros,)
        states.append(tuple(s.to(dtype) for s in state))
    previous = tuple(torch.cat([s[k] for s in states]) for k in range(len(states[0])))
    with torch.no_grad():
        return fn.gate_activations(site.mode, fn.project_input(site.mode, x, weights), previous, weights)
