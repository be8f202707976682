"""Run one direction of one recurrent layer over a (possibly packed) sequence.

Sequences are handled in the packed, time-major layout torch uses internally:
``data`` holds the rows of time step 0, then those of step 1, and so on, and
``batch_sizes[t]`` says how many rows step ``t`` has. A padded ``[T, B, F]``
tensor is the special case where every entry of ``batch_sizes`` is ``B``.
Batches are sorted by decreasing length, so the rows alive at step ``t`` are
always the first ``batch_sizes[t]`` ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from gradprobe.reference.functional import LayerWeights, State, output_of, project_input, step


@dataclass
class DirectionTrace:
    """What a single direction of a layer computed.

    Attributes:
        outputs: ``h_t`` for every time step in chronological order, each
            ``[batch_sizes[t], H_out]``.
        final: The final state, full batch (rows in sorted order).
        states: Every state ``s_t`` in chronological order (only when asked).
        previous: The state each step started from, chronological (only when
            asked); aliases (views) of the previous step's state, so gradients
            taken there are partial derivatives through that step alone.
        inputs: The projected input ``x_proj`` of every step, chronological.
    """

    outputs: list[Tensor]
    final: State
    states: list[State] = field(default_factory=list)
    previous: list[State] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)


def split_steps(data: Tensor, batch_sizes: list[int]) -> list[Tensor]:
    """Split packed ``data`` into one tensor per time step."""
    if len(set(batch_sizes)) == 1:
        return list(data.reshape(len(batch_sizes), batch_sizes[0], *data.shape[1:]).unbind(0))
    return list(torch.split(data, batch_sizes, dim=0))


def run_direction(
    mode: str,
    data: Tensor,
    batch_sizes: list[int],
    init: State,
    weights: LayerWeights,
    reverse: bool = False,
    keep: bool = False,
    state_hook: Callable[[State, State], None] | None = None,
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
        state_hook: Called with each step's previous and new state (live graph tensors).
    """
    previous_h: list[Tensor] | None = None
    if mode != "GRU" and weights.weight_hh.requires_grad and torch.is_grad_enabled():
        previous_h = []
        x_proj = _ProjectionWithRecurrentGrad.apply(  # type: ignore[no-untyped-call]
            data, weights.weight_ih, weights.weight_hh, weights.bias_ih, weights.bias_hh, previous_h
        )
        weights = weights._replace(weight_hh=weights.weight_hh.detach())
    else:
        x_proj = project_input(mode, data, weights)
    steps = split_steps(x_proj, batch_sizes)
    n_steps = len(steps)
    outputs: list[Tensor] = [data.new_empty(0)] * n_steps
    states: list[State] = []
    previous: list[State] = []

    def advance(t: int, state: State) -> State:
        """One step, with the bookkeeping both directions share."""
        if keep:
            state = _alias(state)
            previous.append(state)
        if previous_h is not None:
            previous_h.append(state[0].detach())
        before = state
        state = step(mode, steps[t], state, weights)
        if state_hook is not None:
            state_hook(before, state)
        outputs[t] = output_of(state)
        if keep:
            states.append(state)
        return state

    if not reverse:
        state, finished, alive = init, [], batch_sizes[0]
        for t in range(n_steps):
            rows = batch_sizes[t]
            if rows < alive:  # sequences that ended at the previous step keep their final state
                finished.append(tuple(s[rows:alive] for s in state))
                state, alive = tuple(s[:rows] for s in state), rows
            state = advance(t, state)
        if finished:
            pieces = [state, *reversed(finished)]
            state = tuple(torch.cat([p[k] for p in pieces], dim=0) for k in range(len(state)))
    else:
        alive = batch_sizes[-1]
        state = tuple(s[:alive] for s in init)
        for t in range(n_steps - 1, -1, -1):
            rows = batch_sizes[t]
            if rows > alive:  # sequences that start at this step join with their initial state
                state = tuple(torch.cat([s, s0[alive:rows]], dim=0) for s, s0 in zip(state, init))
                alive = rows
            state = advance(t, state)
        for chronological in (states, previous, previous_h or []):
            chronological.reverse()
    return DirectionTrace(outputs, state, states, previous, steps if keep else [])


class _ProjectionWithRecurrentGrad(torch.autograd.Function):
    """``W_ih x + b_ih + b_hh`` whose backward also returns the whole ``dL/dW_hh``.

    For RNN and LSTM the recurrent product ``W_hh h_{t-1}`` enters the same
    pre-activation as the projected input, so ``dL/dW_hh = sum_t dL/dx_proj_t^T
    h_{t-1}``: one large matrix product after the loop instead of one small
    product (and one accumulation) per step. The loop runs with ``W_hh``
    detached and appends each ``h_{t-1}`` (detached, in step order) to
    ``previous_h``, which the backward reads. Not twice differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any,
        data: Tensor,
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor | None,
        bias_hh: Tensor | None,
        previous_h: list[Tensor],
    ) -> Tensor:
        ctx.save_for_backward(data, weight_ih)
        ctx.previous_h = previous_h
        ctx.has_bias = (bias_ih is not None, bias_hh is not None)
        return project_input("LSTM", data, LayerWeights(weight_ih, weight_hh, bias_ih, bias_hh))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        data, weight_ih = ctx.saved_tensors
        need = ctx.needs_input_grad
        bias_grad = grad.sum(0) if need[3] or need[4] else None
        return (
            grad.mm(weight_ih) if need[0] else None,
            grad.t().mm(data) if need[1] else None,
            grad.t().mm(torch.cat(ctx.previous_h)) if need[2] else None,
            bias_grad if need[3] else None,
            bias_grad if need[4] else None,
            None,
        )


def _alias(state: State) -> State:
    """A view of each state tensor, so that gradients at the step's *input* can be read apart.

    ``h_t`` is computed from ``c_t`` inside a step, so the gradient at the
    ``c_t`` node also holds the ``c_t -> h_t`` path; the gradient at the alias
    is the partial derivative through the next step alone (one Jacobian factor).
    Without a graph being built there is nothing to tell apart.
    """
    if not torch.is_grad_enabled():
        return state
    return tuple(s.view_as(s) for s in state)


def join_steps(per_step: list[Tensor], batch_sizes: list[int]) -> Tensor:
    """Inverse of :func:`split_steps`: packed ``[sum(batch_sizes), F]`` data."""
    if len(set(batch_sizes)) == 1:
        return torch.stack(per_step, dim=0).flatten(0, 1)
    return torch.cat(per_step, dim=0)
