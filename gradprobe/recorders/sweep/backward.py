"""The backward sweep of one layer direction: gradients, propagation profile and Lyapunov vectors in one pass.

See :mod:`gradprobe.recorders.sweep` for what the rows of the sweep hold. The
cell's math (its derivative factors and step product) is its
:class:`~gradprobe.recorders.sweep.cells.CellSweep`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gradprobe.recorders.sweep.cells import FactorRows, cell_sweep
from gradprobe.recorders.sweep.lyapunov import LyapunovPeriods
from gradprobe.recorders.sweep.run import CHUNK_STEPS, DirectionRun, SweepResult


def _put_state(h: Tensor, c: Tensor | None, rows: slice, state: Tensor) -> None:
    """Write flat states ``[n, P + H]`` (``(h, c)`` side by side) into the rows ``rows`` of the h and c buffers."""
    h[rows] = state[:, : h.shape[-1]]
    if c is not None:
        c[rows] = state[:, h.shape[-1] :]


def _whole(t: Tensor) -> Tensor:
    return t


def _prefix(n: int) -> Callable[[Tensor], Tensor]:
    """The first ``n`` rows of a per-step tensor (a packed step's rows that are alive)."""
    return lambda t: t[:n]


def sweep(
    run: DirectionRun,
    direct: Tensor | None,
    final_h: Tensor | None,
    final_c: Tensor | None,
    profile_rows: int,
    lyapunov_k: int,
    generator: torch.Generator,
    need_input_grads: bool,
) -> tuple[SweepResult, Tensor | None]:
    """Back-propagate through one direction; measure its gradients, profile and Lyapunov spectrum.

    Args:
        run: The direction's forward pass.
        direct: ``[T, B, P]`` gradient reaching each ``h_t`` from outside the
            direction (the layer's output, the layer above), chronological;
            ``None`` when nothing arrives.
        final_h: Gradient of the direction's final ``h`` (``h_n``), or ``None``.
        final_c: Gradient of the final ``c`` (``c_n``, LSTM), or ``None``.
        profile_rows: ``R``: random unit vectors started at the last state,
            one per batch row ``0 .. R-1``.
        lyapunov_k: Lyapunov exponents wanted (0: none), at batch row 0.
        generator: Draws the profile's vectors and the Lyapunov start.
        need_input_grads: Also return ``dL/d input`` ``[T, B, I]`` (chronological)
            for the layer below.

    Returns:
        The measurements and the input gradient (or ``None``).

    The sweep walks back in chunks of :data:`CHUNK_STEPS` steps: the
    cotangents and derivative factors exist for one chunk at a time.
    """
    cell_math, w = cell_sweep(run.mode), run.weights
    steps, batch = run.steps, run.h.shape[1]
    out_size = run.h.shape[-1]
    cell = run.c.shape[-1] if run.c is not None else 0
    size = out_size + cell
    r = max(1, min(profile_rows, batch))
    k = min(lyapunov_k, size) if steps >= 2 else 0
    # rows: the profile's r, the k Lyapunov vectors, then the batch (a packed step's alive rows are a prefix)
    e = r + k
    lyap = slice(r, e)
    rows = e + batch
    dtype, device = run.h.dtype, run.h.device
    direct = run.chronological(direct.to(dtype)) if direct is not None else None

    # the cotangents of the state after the last step: what enters there, and the random starts. h and c
    # cotangents live in buffers of their own, so every step reads and writes contiguous rows
    carry_h = run.h.new_zeros(rows, out_size)
    carry_c = run.h.new_zeros(rows, cell) if cell else None
    if direct is not None:
        carry_h[e:] = direct[steps - 1]
    if final_h is not None:
        carry_h[e:] += final_h.to(dtype)
    if final_c is not None and carry_c is not None:
        carry_c[e:] = final_c.to(dtype)
    start = torch.randn(r, size, generator=generator, dtype=torch.float64)
    start /= start.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    if k:  # the Lyapunov start, orthonormal
        start = torch.cat(
            [start, torch.linalg.qr(torch.randn(size, k, generator=generator, dtype=torch.float64))[0].t()]
        )
    _put_state(carry_h, carry_c, slice(0, e), start.to(device=device, dtype=dtype))
    periods = LyapunovPeriods(device, steps)

    sizes = run.sizes
    dead = (
        torch.arange(batch, device=device) >= torch.tensor(sizes, device=device).unsqueeze(1)
        if sizes is not None
        else None
    )
    grad_sq = run.h.new_empty(steps, dtype=torch.float64)
    profile_sq = run.h.new_empty(steps, r, dtype=torch.float64)
    input_grads = run.h.new_empty(steps, batch, w.weight_ih.shape[1]) if need_input_grads else None
    for stop in range(steps, 0, -CHUNK_STEPS):
        first = max(0, stop - CHUNK_STEPS)
        span = stop - first
        factors = cell_math.factors(
            run, first, stop, FactorRows(span, batch, r, k), dead[first:stop] if dead is not None else None
        )
        # local j holds the cotangent of the state after step first + j - 1; j = span is carried in
        v_h = run.h.new_zeros(span + 1, rows, out_size)
        v_c = run.h.new_zeros(span + 1, rows, cell) if cell else None
        v_h[span] = carry_h
        if v_c is not None and carry_c is not None:
            v_c[span] = carry_c
        if direct is not None and stop > 1:
            lo = max(first, 1)
            v_h[lo - first : span, e:] = direct[lo - 1 : stop - 1]
        hs = v_h.unbind(0)
        cs = v_c.unbind(0) if v_c is not None else ()
        # the pre-activation cotangents of every row, written in place step by step; the batch's are the
        # gradient of the layer input (packed: rows that do not step get none)
        gate_grads: Tensor | None = None
        deltas: tuple[Tensor, ...] = ()
        if input_grads is not None:
            new_deltas = run.h.new_zeros if sizes is not None else run.h.new_empty
            all_deltas = new_deltas(span, rows, w.weight_hh.shape[0])
            deltas, gate_grads = all_deltas.unbind(0), all_deltas[:, e:]
        for j in range(span - 1, -1, -1):
            n = rows if sizes is None else e + sizes[first + j]  # rows that step (the rest step with the identity)
            if n < rows:
                hs[j][n:] += hs[j + 1][n:]
                if cs:
                    cs[j][n:] += cs[j + 1][n:]
            cut: Callable[[Tensor], Tensor] = _whole if n == rows else _prefix(n)
            vh, into = cut(hs[j + 1]), cut(hs[j])
            out = cut(deltas[j]) if deltas else None  # where this step's pre-activation cotangents go, if kept
            factors.step_back(j, w, vh, into, cs[j + 1] if cs else None, cs[j] if cs else None, out, cut, n)
            done = steps - first - j  # steps swept so far, this one included
            if k and periods.due(done):  # re-orthonormalize: Q R = (J^T ...) Q
                block = hs[j][lyap] if not cs else torch.cat([hs[j][lyap], cs[j][lyap]], dim=1)
                q, upper = torch.linalg.qr(block.t())
                _put_state(hs[j], cs[j] if cs else None, lyap, q.t())
                periods.add(upper, done)
        squares = v_h[1:, e:].pow(2).sum(dim=2, dtype=torch.float64)
        if dead is not None:
            squares.masked_fill_(dead[first:stop], 0)  # a row's h_t exists only where it is alive
        grad_sq[first:stop] = squares.sum(dim=1)
        chunk_profile_sq = v_h[1:, :r].pow(2).sum(-1, dtype=torch.float64)
        if v_c is not None:
            chunk_profile_sq += v_c[1:, :r].pow(2).sum(-1, dtype=torch.float64)
        profile_sq[first:stop] = chunk_profile_sq
        if gate_grads is not None and input_grads is not None:
            factors.input_cotangents(gate_grads, v_h[1:, e:], out_size)
            torch.matmul(gate_grads, w.weight_ih, out=input_grads[first:stop])
        carry_h, carry_c = hs[0], cs[0] if cs else None
    grad_norms = run.chronological(grad_sq.sqrt())
    profile = profile_sq.sqrt().mean(-1).flip(0)  # profile[k]: k steps back from the last state
    lyapunov = periods.exponents()  # empty without Lyapunov vectors (k = 0)
    grads_in = run.chronological(input_grads) if input_grads is not None else None
    return SweepResult(grad_norms.tolist(), profile.tolist(), lyapunov), grads_in
