"""Replay captured recurrent calls step by step with the reference math.

A replay rebuilds, outside the user's autograd graph, every per-step state of
every layer and direction (a *track*), using the module's current weights
(detached, so nothing reaches ``p.grad``). For fused modules this is the only
way to see inside the C++/cuDNN kernel; for cells it links the calls of one
training step into a chain.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gradprobe.cell_calls import as_tuple, flat_tensors, state_part
from gradprobe.discovery import RecurrentSite
from gradprobe.recorders.capture import CellCalls, StackCall
from gradprobe.reference import GRU, LSTM, RNN, LayerWeights, RecurrentBase
from gradprobe.reference import functional as fn

StepFn = Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]


@dataclass
class Track:
    """The replayed per-step states of one layer direction (or one cell chain).

    Attributes:
        name: ``module.l{k}`` (``_reverse``) or the cell's module name.
        mode: Cell math, or ``None`` for a custom cell.
        step_inputs: Per step, what the step function takes besides the state
            (the projected input for stacks, ``x_t`` for cells).
        previous: Per step, the state the step started from.
        states: Per step, the state after the step.
        step_fn: ``(inputs, state) -> state`` for any rows of one step.
        reverse: Time runs backwards (reverse direction of a bidirectional layer).
        weights: The layer weights when the mode is known (gate statistics).
        output_grads: Total ``dL/dh_t`` per step: captured directly from the
            user graph (cells) or back-propagated through the replay (stacks).
        chained: Whether each step's state input was the previous output.
        inputs_projected: ``step_inputs`` already hold ``W_ih x_t + b``.
    """

    name: str
    mode: str | None
    step_inputs: list[Tensor]
    previous: list[tuple[Tensor, ...]]
    states: list[tuple[Tensor, ...]]
    step_fn: StepFn
    reverse: bool = False
    weights: LayerWeights | None = None
    output_grads: list[Tensor | None] | None = None
    chained: bool = True
    inputs_projected: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def alive_rows(self) -> int:
        """Rows present at every step (the longest sequences of a packed batch)."""
        return min(s[0].shape[0] for s in self.states)


def _twin_for(module: nn.Module) -> RecurrentBase:
    """A weightless reference module with ``module``'s configuration (parameters on ``meta``)."""
    if isinstance(module, RecurrentBase):
        return module
    param = next(module.parameters())
    config: dict[str, Any] = {
        "num_layers": module.num_layers,
        "bias": module.bias,
        "batch_first": module.batch_first,
        "dropout": module.dropout,
        "bidirectional": module.bidirectional,
        "device": "meta",
        "dtype": param.dtype,
    }
    if isinstance(module, nn.LSTM):
        twin: RecurrentBase = LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **config)
    elif isinstance(module, nn.GRU):
        twin = GRU(module.input_size, module.hidden_size, **config)
    else:
        twin = RNN(module.input_size, module.hidden_size, nonlinearity=module.nonlinearity, **config)
    return twin


class StackReplayer:
    """Replays calls of one multi-layer module (fused torch.nn or reference)."""

    def __init__(self, site: RecurrentSite) -> None:
        self.site = site
        self.twin = _twin_for(site.module)

    def replay(self, call: StackCall, rows: int | None = None) -> list[Track]:
        """Rebuild every track of ``call``.

        Args:
            call: The captured call.
            rows: Keep only the first ``rows`` batch rows (sampling: no
                autograd graph, no gradients).

        On a deep step (``call.grads`` captured) the captured output gradients
        are back-propagated through the replay, and each track's
        ``output_grads`` holds the total ``dL/dh_t``.
        """
        module: Any = self.site.module
        params = weights_in_use(module)
        dtype = next(iter(params.values())).dtype  # under autocast the captured tensors may be half precision
        input_, hx = detached_input(call.input, call.hx, rows, module.batch_first, dtype)
        deep = rows is None and bool(call.grads)
        if deep:
            # the graph only needs to reach the hidden states: hang it on the initial state, so the
            # backward skips the first layer's input projection (dL/dx is never needed)
            hx = _initial_state_requiring_grad(self.twin, input_, hx)
        was_training = self.twin.training
        self.twin.train(call.training and rows is None)
        rng = torch.random.fork_rng(devices=[]) if call.rng_state is not None else nullcontext()
        try:
            with rng, torch.enable_grad() if deep else torch.inference_mode():
                if call.rng_state is not None:
                    torch.set_rng_state(call.rng_state)
                out, hidden, trace = self.twin.trace(input_, hx, params=params)
        finally:
            self.twin.train(was_training)
        tracks = []
        for layer, per_direction in enumerate(trace.layers):
            for direction, run in enumerate(per_direction):
                weights = self.twin.layer_weights(layer, direction, params)
                tracks.append(
                    Track(
                        name=self.site.tracks[layer * len(per_direction) + direction],
                        mode=self.twin.mode,
                        step_inputs=run.inputs,
                        previous=run.previous,
                        states=run.states,
                        step_fn=_reference_step(self.twin.mode, weights),
                        reverse=bool(direction),
                        weights=weights,
                        inputs_projected=True,
                    )
                )
        if deep:
            data = out.data if isinstance(out, PackedSequence) else out
            _fill_output_grads(tracks, [data, *as_tuple(hidden)], call.grads)
        return tracks

    def replay_chain(self, calls: list[StackCall]) -> list[Track]:
        """Rebuild every track over a chain of calls (a decoder called once per token) as one sequence.

        Each call is replayed on its own and back-propagates its own captured
        gradients (those of ``h_n``/``c_n`` already hold everything downstream),
        so joining the tracks end to end gives the total ``dL/dh_t`` over the
        whole chain without counting any path twice. A bidirectional module's
        reverse direction runs backwards inside each call, so there only the
        last call is measured.
        """
        if len(calls) == 1:
            return self.replay(calls[0])
        if getattr(self.site.module, "bidirectional", False):
            tracks = self.replay(calls[-1])
            for track in tracks:
                track.notes.append(
                    f"bidirectional module called {len(calls)} times in a step: the last call is measured"
                )
            return tracks
        per_call = [self.replay(call) for call in calls]
        joined = []
        for index, first in enumerate(per_call[0]):
            parts = [tracks[index] for tracks in per_call]
            grads = [g for part in parts for g in (part.output_grads or [None] * len(part.states))]
            joined.append(
                Track(
                    name=first.name,
                    mode=first.mode,
                    step_inputs=[x for part in parts for x in part.step_inputs],
                    previous=[p for part in parts for p in part.previous],
                    states=[s for part in parts for s in part.states],
                    step_fn=first.step_fn,
                    weights=first.weights,
                    output_grads=grads,
                    inputs_projected=first.inputs_projected,
                    notes=[f"{len(calls)} calls in one training step, measured as one sequence"],
                )
            )
        return joined


def _fill_output_grads(tracks: list[Track], outputs: list[Tensor], grads: list[Tensor | None]) -> None:
    """Back-propagate captured output gradients through the replay: ``output_grads[t] = dL/dh_t``."""
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
    hs = [state[0] for track in tracks for state in track.states]
    found: tuple[Tensor | None, ...] = (None,) * len(hs)
    if pairs:
        found = torch.autograd.grad([o for o, _ in pairs], hs, [g.to(o.dtype) for o, g in pairs], allow_unused=True)
    cursor = 0
    for track in tracks:
        count = len(track.states)
        track.output_grads = list(found[cursor : cursor + count])
        cursor += count


def _reference_step(mode: str, weights: LayerWeights) -> StepFn:
    def step(x_proj: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return fn.step(mode, x_proj, state, weights)

    return step


def _initial_state_requiring_grad(twin: RecurrentBase, input_: Any, hx: Any) -> Any:
    if hx is None:
        batch: int | None
        if isinstance(input_, PackedSequence):
            batch, like = int(input_.batch_sizes[0]), input_.data
        else:
            batch_dim = 0 if twin.batch_first else 1
            batch, like = (int(input_.shape[batch_dim]) if input_.dim() == 3 else None), input_
        shapes = twin._expected_state_shapes(batch if batch is not None else 1)
        states = tuple(like.new_zeros(shape if batch is not None else (shape[0], shape[2])) for shape in shapes)
    else:
        states = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
    states = tuple(s.detach().clone().requires_grad_() for s in states)
    return states if twin.mode == "LSTM" else states[0]


def detached_input(input_: Any, hx: Any, rows: int | None, batch_first: bool, dtype: torch.dtype) -> tuple[Any, Any]:
    """A captured call's input and initial state, detached copies in ``dtype`` (its first ``rows`` batch rows when
    given; packed input: the longest sequences)."""
    hx = (
        None
        if hx is None
        else tuple(h.detach().to(dtype) for h in hx)
        if isinstance(hx, (tuple, list))
        else hx.detach().to(dtype)
    )
    if isinstance(input_, PackedSequence):
        data = input_.data.detach().to(dtype, copy=True)
        if rows is None:
            return PackedSequence(data, input_.batch_sizes, input_.sorted_indices, input_.unsorted_indices), hx
        sizes = input_.batch_sizes.tolist()
        keep = [min(rows, b) for b in sizes]
        starts = torch.tensor([0, *sizes[:-1]]).cumsum(0).tolist()
        picked = torch.cat([data[s : s + k] for s, k in zip(starts, keep)])
        if hx is not None:
            order = input_.sorted_indices

            def pick(h: Tensor) -> Tensor:
                return (h.index_select(1, order) if order is not None else h)[:, :rows]

            hx = tuple(pick(h) for h in hx) if isinstance(hx, tuple) else pick(hx)
        return PackedSequence(picked, torch.tensor(keep)), hx
    data = input_.detach().to(dtype, copy=True)
    if rows is not None:
        batched = data.dim() == 3
        if batched:
            data = data[:rows] if batch_first else data[:, :rows]
            if hx is not None:
                hx = tuple(h[:, :rows] for h in hx) if isinstance(hx, tuple) else hx[:, :rows]
    return data, hx


def weights_in_use(module: Any) -> dict[str, Tensor]:
    """The weights a multi-layer module computes with, detached, by their torch.nn names.

    For ``torch.nn`` RNN/LSTM/GRU these are its flat weights read by name, which
    is what its forward reads: a parametrized weight (``torch.nn.utils.parametrize``)
    computed, the tensor a DropConnect wrapper (AWD-LSTM's ``WeightDrop``) set
    for this call in place of the deleted parameter. Other modules: their parameters.
    """
    names = getattr(module, "_flat_weights_names", None)
    if isinstance(module, nn.RNNBase) and names:
        found = {name: getattr(module, name, None) for name in names}
        return {name: value.detach() for name, value in found.items() if isinstance(value, Tensor)}
    return {name: p.detach() for name, p in module.named_parameters()}


class CellReplayer:
    """Replays the calls of a cell within one step as a chain of states."""

    def __init__(self, site: RecurrentSite) -> None:
        self.site = site

    def _step_fn(self, convention: str) -> StepFn:
        module = self.site.module
        params = {name: p.detach() for name, p in module.named_parameters()}
        buffers = dict(module.named_buffers())
        packed_state = self.site.mode == "LSTM"

        dtype = next(iter(params.values())).dtype if params else None

        def step(x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            if dtype is not None:  # captured under autocast: replay in the weights' precision
                x, state = x.to(dtype), tuple(s.to(dtype) for s in state)
            arg = state if (len(state) > 1 or packed_state) else state[0]
            out = torch.func.functional_call(module, {**params, **buffers}, (x, arg))
            return state_part(flat_tensors(out), convention)

        return step

    def replay(self, calls: CellCalls, paused: Callable[[], AbstractContextManager[None]]) -> Track:
        """Rebuild the chain ``s_t = cell(x_t, s_{t-1})`` of the captured calls."""
        step = self._step_fn(calls.convention)
        first = calls.states_in[0]
        if not first:
            first = tuple(torch.zeros_like(s.detach()) for s in state_part(calls.outputs[0], calls.convention))
        state = tuple(s.detach() for s in first)
        previous, states = [], []
        with paused(), torch.no_grad():
            for x in calls.inputs:
                previous.append(state)
                state = step(x, state)
                states.append(state)
        grads = [calls.grads.get((i, calls.h_position)) for i in range(len(calls.inputs))]
        weights = None
        if self.site.mode is not None:
            weights = cell_weights(self.site.module)
        track = Track(self.site.name, self.site.mode, list(calls.inputs), previous, states, step, weights=weights)
        track.output_grads = grads
        track.chained = calls.chained
        if not calls.chained:
            track.notes.append("state inputs were not the previous outputs; replayed as a chain")
        return track


def cell_weights(cell: nn.Module) -> LayerWeights:
    """The detached weights of a built-in ``*Cell`` (``bias_ih``/``bias_hh`` may be ``None``)."""
    m: Any = cell
    return LayerWeights(m.weight_ih.detach(), m.weight_hh.detach(), _detached(m.bias_ih), _detached(m.bias_hh))


def _detached(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


class SiteReplayers:
    """One replayer per recurrent site: :class:`StackReplayer` for fused stacks, :class:`CellReplayer` for cells."""

    def __init__(self, sites: list[RecurrentSite]) -> None:
        self._stacks = {s.name: StackReplayer(s) for s in sites if s.kind == "stack"}
        self._cells = {s.name: CellReplayer(s) for s in sites if s.kind == "cell"}

    def stack(self, name: str) -> StackReplayer:
        return self._stacks[name]

    def cell(self, name: str) -> CellReplayer:
        return self._cells[name]

    def release(self) -> None:
        """Drop the replayers (and the reference twins they hold)."""
        self._stacks = {}
        self._cells = {}
