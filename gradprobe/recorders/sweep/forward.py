"""The sweep's forward pass of one layer direction: the input projection in one product, then the cell's steps."""

from __future__ import annotations

import torch
from torch import Tensor

from gradprobe.recorders.sweep.cells import cell_sweep
from gradprobe.recorders.sweep.run import DirectionRun, carry
from gradprobe.reference import functional as fn
from gradprobe.reference.functional import LayerWeights


def project(
    mode: str, x: Tensor, w: LayerWeights, reverse: bool, head_rows: int, sizes: list[int] | None
) -> tuple[Tensor, Tensor, list[int] | None]:
    """The input projection of every step in processing order, its first ``head_rows`` rows kept apart,
    and the alive rows per step in processing order."""
    if reverse:
        x = x.flip(0)
        sizes = sizes[::-1] if sizes is not None else None
    steps, batch = x.shape[0], x.shape[1]
    pre = fn.project_input(mode, x.reshape(steps * batch, -1), w).view(steps, batch, -1)
    return pre, pre[:, :head_rows].clone(), sizes


def forward(
    name: str,
    mode: str,
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w: LayerWeights,
    reverse: bool,
    head_rows: int,
    sizes: list[int] | None = None,
) -> DirectionRun:
    """Run one direction over the padded time-major input ``x`` ``[T, B, I]`` and keep what the sweep needs.

    Args:
        head_rows: Rows whose projected inputs are kept (the Jacobian estimates and saturation use them).
        sizes: Packed input: rows alive at each step, chronological (see :attr:`DirectionRun.sizes`).
    """
    cell = cell_sweep(mode)
    pre, x_head, sizes = project(mode, x, w, reverse, head_rows, sizes)
    h = h0.new_empty(pre.shape[0] + 1, *h0.shape)
    h[0] = h0
    run = DirectionRun(name, mode, cell, w, reverse, x_head, h, sizes=sizes)
    cell.forward(run, pre, c0, sizes)
    return run


def forward_known(
    name: str,
    mode: str,
    x: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w: LayerWeights,
    reverse: bool,
    head_rows: int,
    outputs: Tensor,
    sizes: list[int] | None = None,
) -> DirectionRun:
    """:func:`forward` for a direction whose outputs ``h_t`` are known (the top layer: the call's output).

    With every ``h_{t-1}`` at hand the pre-activations of all steps are two
    matrix products and the activations one elementwise pass each, with no
    loop over time; only the LSTM cell state is a scan, one fused
    multiply-add per step. A plain RNN needs no pre-activations at all (its
    slopes come from the outputs): only the head rows are projected, for the
    linearization. ``outputs`` is ``[T, B, P]``, chronological
    (for packed input, anything where a row is not alive: those entries are
    replaced by the state the row carries).
    """
    cell = cell_sweep(mode)
    projected = x if cell.projects_known_rows else x[:, :head_rows]
    pre, x_head, sizes = project(mode, projected, w, reverse, head_rows, sizes)
    steps, batch = outputs.shape[0], outputs.shape[1]
    h = torch.cat([h0.unsqueeze(0), (outputs.flip(0) if reverse else outputs).to(h0.dtype)])
    if sizes is not None:
        hs = h.unbind(0)
        for t in range(steps):
            carry(hs, sizes, t)
    previous = h[:-1].reshape(steps * batch, -1)
    run = DirectionRun(name, mode, cell, w, reverse, x_head, h, sizes=sizes)
    cell.forward_known(run, pre, previous, c0, sizes)
    return run
