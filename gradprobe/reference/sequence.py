"""Run one direction of one recurrent layer over a (possibly packed) sequence.

Sequences are handled in the packed, time-major layout torch uses internally:
``data`` holds the rows of time step 0, then those of step 1, and so on, and
``batch_sizes[t]`` says how many rows step ``t`` has. A padded ``[T, B, F]``
tensor is the special case where every entry of ``batch_sizes`` is ``B``.
Batches are sorted by decreasing length, so the rows alive at step ``t`` are
always the first ``batch_sizes[t]`` ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from gradprobe.reference.functional import LayerWeights, State, output_of, project_input, step


@dataclass
class DirectionTrace:
    """What a single direction of a layer computed.

    Attributes:
        outputs: ``h_t`` for every time step in chronological order, each
            ``[batch_sizes[t], H_out]``.
        final: The final state, full batch (rows in sorted order).
        states: Every state ``s_t`` in chronological order (only when asked).
        inputs: The projected input ``x_proj`` of every step, chronological.
    """

    outputs: list[Tensor]
    final: State
    states: list[State] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)


def split_steps(data: Tensor, batch_sizes: list[int]) -> list[Tensor]:
    """Split packed ``data`` into one tensor per time step."""
    if len(set(batch_sizes)) == 1:
        return list(data.view(len(batch_sizes), batch_sizes[0], *data.shape[1:]).unbind(0))
    return list(torch.split(data, batch_sizes, dim=0))


def run_direction(
    mode: str,
    data: Tensor,
    batch_sizes: list[int],
    init: State,
    weights: LayerWeights,
    reverse: bool = False,
    keep: bool = False,
) -> DirectionTrace:
    """Run one direction of a layer.

    Args:
        mode: Cell kind, one of ``RNN_TANH``, ``RNN_RELU``, ``LSTM``, ``GRU``.
        data: Packed time-major input, ``[sum(batch_sizes), F]``.
        batch_sizes: Rows per time step, non-increasing.
        init: Initial state, each tensor ``[batch_sizes[0], *]``.
        weights: The direction's parameters.
        reverse: Run from the last time step to the first.
        keep: Also return every intermediate state and projected input (for
            replaying a layer step by step in the probe).
    """
    steps = split_steps(project_input(mode, data, weights), batch_sizes)
    n_steps = len(steps)
    outputs: list[Tensor] = [data.new_empty(0)] * n_steps
    states: list[State] = []
    if not reverse:
        state, finished, alive = init, [], batch_sizes[0]
        for t in range(n_steps):
            rows = batch_sizes[t]
            if rows < alive:
                finished.append(tuple(s[rows:alive] for s in state))
                state, alive = tuple(s[:rows] for s in state), rows
            state = step(mode, steps[t], state, weights)
            outputs[t] = output_of(state)
            if keep:
                states.append(state)
        if finished:
            pieces = [state, *reversed(finished)]
            state = tuple(torch.cat([p[k] for p in pieces], dim=0) for k in range(len(state)))
        return DirectionTrace(outputs, state, states, steps if keep else [])

    alive = batch_sizes[-1]
    state = tuple(s[:alive] for s in init)
    for t in range(n_steps - 1, -1, -1):
        rows = batch_sizes[t]
        if rows > alive:
            state = tuple(torch.cat([s, s0[alive:rows]], dim=0) for s, s0 in zip(state, init))
            alive = rows
        state = step(mode, steps[t], state, weights)
        outputs[t] = output_of(state)
        if keep:
            states.append(state)
    states.reverse()
    return DirectionTrace(outputs, state, states, steps if keep else [])


def join_steps(per_step: list[Tensor], batch_sizes: list[int]) -> Tensor:
    """Inverse of :func:`split_steps`: packed ``[sum(batch_sizes), F]`` data."""
    if len(set(batch_sizes)) == 1:
        return torch.stack(per_step, dim=0).flatten(0, 1)
    return torch.cat(per_step, dim=0)
