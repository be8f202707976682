"""A whole captured stack call: padded or packed input, every layer direction forward, then swept top layer first."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from gradprobe.recorders.replay import detached_input
from gradprobe.recorders.sweep.backward import sweep
from gradprobe.recorders.sweep.forward import forward, forward_known
from gradprobe.recorders.sweep.run import SWEEP_DTYPES, DirectionRun, SweepResult


class PackedLayout:
    """A packed call's layout: step ``t`` holds the first ``sizes[t]`` rows (sorted longest first).

    :meth:`pad` puts packed rows ``[N, F]`` into a zero-filled ``[T, B, F]``
    tensor, :meth:`pack` takes them back out.
    """

    def __init__(self, sizes: list[int], device: torch.device) -> None:
        self.sizes = sizes
        self.steps, self.batch = len(sizes), sizes[0]
        self._rows = torch.cat([torch.arange(n) + t * self.batch for t, n in enumerate(sizes)]).to(device)

    def pad(self, packed: Tensor) -> Tensor:
        padded = packed.new_zeros(self.steps * self.batch, *packed.shape[1:])
        return padded.index_copy_(0, self._rows, packed).view(self.steps, self.batch, *packed.shape[1:])

    def pack(self, padded: Tensor) -> Tensor:
        return padded.reshape(self.steps * self.batch, *padded.shape[2:]).index_select(0, self._rows)


@dataclass
class MeasuredDirection:
    """One track of a swept stack call: its forward pass and what the sweep measured."""

    run: DirectionRun
    result: SweepResult


def supported(twin: Any, call: Any, weight_dtype: torch.dtype, gradients: bool = True) -> bool:
    """Whether the sweep (or, without ``gradients``, :func:`sample_stack`) handles this captured call,
    else the general replay does.

    It does for one batched call, padded (``[T, B, I]`` or batch first) or
    packed, in single or double precision, and for the sweep with captured
    gradients. Unbatched inputs and half-precision weights take the general replay.
    """
    input_ = call.input
    if (gradients and not call.grads) or weight_dtype not in SWEEP_DTYPES:
        return False
    if isinstance(input_, PackedSequence):
        return len(input_.batch_sizes) > 0
    return isinstance(input_, Tensor) and input_.dim() == 3 and input_.shape[1 if twin.batch_first else 0] > 0


@dataclass
class StackInput:
    """One captured stack call, made ready for the forward pass: padded, time-major, rows in processing order."""

    x: Tensor  # [T, B, I]
    init: Any  # the twin's initial states per layer direction
    known: Tensor | None  # the top layer's outputs [T, B, D*P], when kept
    layout: PackedLayout | None  # packed input: how to pack and pad
    sizes: list[int] | None  # packed input: rows alive per step
    out_grad: Tensor | None = None
    hn_grad: Tensor | None = None
    cn_grad: Tensor | None = None


def stack_input(twin: Any, call: Any, dtype: torch.dtype, rows: int | None = None) -> StackInput:
    """The call's input, initial state, output and gradients as the forward pass and the sweep take them.

    ``rows``: keep the first rows only (packed input: the longest sequences).
    """
    grads = list(call.grads) + [None] * (3 - len(call.grads))
    out_grad, hn_grad, cn_grad = grads[0], grads[1], grads[2] if twin.mode == "LSTM" else None
    out_grad = out_grad.detach() if out_grad is not None else None
    known = call.layer_output()  # the top layer's outputs: its forward pass needs no loop over time
    layout: PackedLayout | None = None
    if isinstance(call.input, PackedSequence):
        layout = PackedLayout(call.input.batch_sizes.tolist(), call.input.data.device)
        order = call.input.sorted_indices  # initial and final states are in the caller's row order
        x, hx = detached_input(call.input.data, call.hx, None, False, dtype)
        x = layout.pad(x)
        if order is not None:
            hx = twin.map_hidden(hx, lambda h: h.index_select(1, order)) if hx is not None else None
            hn_grad = hn_grad.index_select(1, order) if hn_grad is not None else None
            cn_grad = cn_grad.index_select(1, order) if cn_grad is not None else None
        out_grad = layout.pad(out_grad) if out_grad is not None else None
        known = layout.pad(known) if known is not None else None
    else:
        x, hx = detached_input(call.input, call.hx, None, twin.batch_first, dtype)
        if twin.batch_first:
            x = x.transpose(0, 1)
            out_grad = out_grad.transpose(0, 1) if out_grad is not None else None
            known = known.transpose(0, 1) if known is not None else None
    sizes = layout.sizes if layout is not None else None
    if rows is not None:
        x = x[:, :rows]
        hx = twin.map_hidden(hx, lambda h: h[:, :rows]) if hx is not None else None
        known = known[:, :rows] if known is not None else None
        sizes = [min(size, rows) for size in sizes] if sizes is not None else None
    return StackInput(x, twin.initial_states(x, x.shape[1], hx), known, layout, sizes, out_grad, hn_grad, cn_grad)


def forward_stack(
    twin: Any, names: list[str], given: StackInput, params: dict[str, Tensor], head: int, training: bool
) -> tuple[list[list[DirectionRun]], list[Tensor | None]]:
    """Every layer direction's forward pass, the top layer from the call's outputs where they were kept;
    with ``training``, the inter-layer dropout masks drawn as torch drew them (the call's random state)."""
    directions = 2 if twin.bidirectional else 1
    layout, sizes = given.layout, given.sizes
    was_training = twin.training
    twin.train(training)
    masks: list[Tensor | None] = [None]
    runs: list[list[DirectionRun]] = []
    try:
        layer_input = given.x
        for layer in range(twin.num_layers):
            if layer:
                # drawn on the layer input's own shape (packed rows for packed input), as torch draws it
                mask = (
                    None
                    if not training
                    else twin.dropout_mask(layer_input if layout is None else layout.pack(layer_input))
                )
                mask = layout.pad(mask) if layout is not None and mask is not None else mask
                masks.append(mask)
                if mask is not None:
                    layer_input = layer_input * mask
            per_direction = []
            for direction in range(directions):
                index = layer * directions + direction
                weights = twin.layer_weights(layer, direction, params)
                c0 = given.init[1][index] if twin.mode == "LSTM" else None
                args = (names[index], twin.mode, layer_input, given.init[0][index], c0, weights, bool(direction), head)
                if layer == twin.num_layers - 1 and given.known is not None:
                    width = given.known.shape[-1] // directions
                    part = given.known[..., direction * width : (direction + 1) * width]
                    per_direction.append(forward_known(*args, part, sizes=sizes))
                else:
                    per_direction.append(forward(*args, sizes=sizes))
            runs.append(per_direction)
            outputs = [run.outputs() for run in per_direction]
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
    finally:
        twin.train(was_training)
    return runs, masks


def sample_stack(twin: Any, names: list[str], call: Any, params: dict[str, Tensor], rows: int) -> list[DirectionRun]:
    """The forward pass of every layer direction of one stack call on its first ``rows`` batch rows, without
    dropout, as sampled saturation reads it (the top layer from the call's output where it was kept).

    Takes the calls :func:`supported` takes, gradients or not.
    """
    dtype = next(iter(params.values())).dtype
    given = stack_input(twin, call, dtype, rows)
    with torch.no_grad():
        runs, _ = forward_stack(twin, names, given, params, given.x.shape[1], training=False)
    return [run for per_direction in runs for run in per_direction]


def sweep_stack(
    twin: Any,
    names: list[str],
    call: Any,
    params: dict[str, Tensor],
    profile_rows: int,
    lyapunov_k: int,
    generator: torch.Generator,
    head_rows: int,
) -> list[MeasuredDirection]:
    """Forward every layer direction of one stack call, then sweep them top layer first.

    Args:
        twin: The stack's reference twin (configuration and dropout masks).
        names: Track names, layer-major, forward direction first.
        call: The captured call (input, initial state, RNG state, gradients).
        params: The module's detached parameters by name.
        profile_rows: Rows of the propagation profile.
        lyapunov_k: Lyapunov exponents per track.
        generator: The probe's random generator.
        head_rows: Batch rows kept for the Jacobian estimates and saturation (:attr:`DirectionRun.x_head`).
    """
    dtype = next(iter(params.values())).dtype
    given = stack_input(twin, call, dtype)
    sizes = given.sizes
    directions = 2 if twin.bidirectional else 1
    layers = twin.num_layers
    hn_grad, cn_grad = given.hn_grad, given.cn_grad

    # the Jacobian estimates, saturation and the profile use rows alive at every step (packed: the longest)
    head = head_rows if sizes is None else max(1, min(head_rows, sizes[-1]))
    profile_rows = profile_rows if sizes is None else max(1, min(profile_rows, sizes[-1]))

    rng = torch.random.fork_rng(devices=[]) if call.rng_state is not None else nullcontext()
    with rng, torch.no_grad():
        if call.rng_state is not None:
            torch.set_rng_state(call.rng_state)
        runs, masks = forward_stack(twin, names, given, params, head, training=call.training)

    measured: dict[str, MeasuredDirection] = {}
    with torch.no_grad():
        direct = given.out_grad.to(dtype) if given.out_grad is not None else None
        for layer in range(layers - 1, -1, -1):
            below: Tensor | None = None
            for direction, run in enumerate(runs[layer]):
                index = layer * directions + direction
                width = run.h.shape[-1]
                part = direct[..., direction * width : (direction + 1) * width] if direct is not None else None
                result, input_grads = sweep(
                    run,
                    part,
                    hn_grad[index].detach() if hn_grad is not None else None,
                    cn_grad[index].detach() if cn_grad is not None else None,
                    profile_rows,
                    lyapunov_k,
                    generator,
                    need_input_grads=layer > 0,
                )
                measured[run.name] = MeasuredDirection(run, result)
                if input_grads is not None:
                    below = input_grads if below is None else below + input_grads
            mask = masks[layer]
            if below is not None and mask is not None:
                below = below * mask
            direct = below
    return [measured[name] for name in names]
