"""The deep step of a fused stack: one forward pass and one backward sweep per layer direction.

The general replay (:mod:`gradprobe.recorders.replay`) rebuilds a stack's
states with the reference step functions under autograd, back-propagates the
captured gradients through that graph (about ten autograd nodes per time step),
and then the propagation profile and the Lyapunov spectrum each walk the
sequence once more. For the common case, one call of a ``nn.RNN``/``nn.LSTM``/
``nn.GRU`` (or reference) stack on a padded batch, this module does the same
work in two passes with analytic products and no graph:

1. **forward**, bottom layer first: the input projection of all steps in one
   matrix product, then per step one recurrent product and the cell's
   elementwise math, keeping the activations and the states. The top layer's
   outputs are the call's own output, captured by the probe: there every
   ``h_{t-1}`` is known, so its pre-activations are two matrix products over
   all steps at once and only the LSTM cell state is a scan
   (:func:`forward_known`);
2. **backward**, top layer first: per step one vector-Jacobian product for a
   block of rows that holds at once
   - the batch's total ``dL/dh_t`` (the captured gradients of the output and
     of the final state injected where they enter, so the rows carry exactly
     what autograd would),
   - the propagation profile's random unit vectors (``profile[k]``), and
   - the Lyapunov vectors, re-orthonormalized by a QR step every few steps
     (:class:`_LyapunovPeriods`).

   The pre-activation cotangents of the gradient rows give, in one matrix
   product, the gradient that enters the layer below.

Every direction is processed in its own order of time (a reverse direction
runs from the last step to the first), and every result is returned in
chronological order.

A packed batch is swept padded, its rows sorted longest first: a row that has
ended (or, in a reverse direction, not yet started) carries its state, a step
with the identity Jacobian. The sweep's row block puts the profile and
Lyapunov rows (copies of rows alive at every step) before the batch, so the
rows that step at ``t`` are a prefix and only they are computed.

The Lyapunov spectrum is taken on the adjoint products ``J_t^T``: the singular
values of ``J_T ... J_1`` and of its transpose are the same, so the QR method
on either gives the same exponents (exactly for normal Jacobians, and in the
limit of long products in general).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from gradprobe.recorders.replay import _detached_input
from gradprobe.reference import functional as fn
from gradprobe.reference.functional import LayerWeights

#: Floating types the sweep runs in; others (half precision weights) take the general replay.
SWEEP_DTYPES = frozenset({torch.float32, torch.float64})
#: Time steps whose activations are expanded at once in the backward sweep (bounds its temporaries).
CHUNK_STEPS = 64
#: Steps between two QR re-orthonormalizations of the Lyapunov vectors off the CPU, where the period cannot
#: adapt (see :class:`_LyapunovPeriods`).
LYAPUNOV_EVERY = 2
#: The first period on the CPU: from 10 steps on it lies in the burn-in, so a spread beyond :data:`LYAPUNOV_SPREAD`
#: within it costs no accuracy.
LYAPUNOV_FIRST = 4
#: Longest period between two QR steps on the CPU, where periods adapt to how fast the vectors pull apart.
LYAPUNOV_MAX_EVERY = 32
#: Largest growth ratio between the Lyapunov vectors allowed to build up within one period (its float32
#: rounding, ``1e3 * 6e-8``, stays far below what the exponents are read to).
LYAPUNOV_SPREAD = 1e3
#: Largest factor by which one Lyapunov vector may grow or shrink within one period (far from float32's
#: range, ``1e38``, and its subnormals below ``1e-38``).
LYAPUNOV_RANGE = 1e10


@dataclass
class DirectionRun:
    """One layer direction after the forward pass, in its processing order of time.

    Per-step tensors are ``[T, B, *]`` (states ``[T + 1, B, *]``: index 0 is the
    initial state, ``t + 1`` the state after step ``t``).

    Attributes:
        name: Track name (``module.l{k}`` or ``module.l{k}_reverse``).
        mode: Cell math.
        weights: The direction's detached weights.
        reverse: Whether processing order runs backwards in time.
        x_head: Projected inputs of the first rows (biases folded as
            :func:`fn.project_input` folds them), ``[T, R, G]``.
        h: Hidden states (the direction's outputs).
        activations: LSTM: ``(i, f, g, o)`` after their nonlinearities;
            GRU: ``(r, z)``; RNN: unused (the slope is read from ``h``).
        c: LSTM cell states.
        tanh_c: LSTM: ``tanh(c_t)`` of each step.
        hh: GRU: ``W_hh h_{t-1} + b_hh`` of each step.
        new: GRU: the candidate ``n`` of each step.
        sizes: Packed input: rows alive at each step, in processing order
            (the first ``sizes[t]`` rows; the others carry their state
            unchanged, a step with the identity Jacobian); ``None``: all.
    """

    name: str
    mode: str
    weights: LayerWeights
    reverse: bool
    x_head: Tensor
    h: Tensor
    activations: Tensor | None = None
    c: Tensor | None = None
    tanh_c: Tensor | None = None
    hh: Tensor | None = None
    new: Tensor | None = None
    sizes: list[int] | None = None

    @property
    def steps(self) -> int:
        return self.h.shape[0] - 1

    def chronological(self, t: Tensor) -> Tensor:
        """A per-step tensor in processing order, put in order of time."""
        return t.flip(0) if self.reverse else t

    def outputs(self) -> Tensor:
        """``h_t`` of every step, ``[T, B, P]``, chronological."""
        return self.chronological(self.h[1:])

    def _gates(self) -> dict[str, Tensor] | None:
        """The gate activations of every row and step, ``[T, B, *]`` in processing order, named as
        :attr:`fn.Linearization.gates` names them; ``None`` for ReLU modes."""
        if self.mode == "LSTM":
            assert self.activations is not None and self.tanh_c is not None
            i, f, g, o = self.activations.chunk(4, dim=-1)
            return {"input": i, "forget": f, "cell": g, "output": o, "cell_state": self.tanh_c}
        if self.mode == "GRU":
            assert self.activations is not None and self.new is not None
            r, z = self.activations.chunk(2, dim=-1)
            return {"reset": r, "update": z, "new": self.new}
        if self.mode == "RNN_TANH":
            return {"tanh": self.h[1:]}
        return None

    def head_gates(self, rows: int) -> dict[str, Tensor] | None:
        """The gate activations of the first ``rows`` batch rows, ``[T, rows, *]``, chronological, named as
        :attr:`fn.Linearization.gates` names them (GRU adds ``hh_new``); ``None`` for ReLU modes."""
        gates = self._gates()
        if gates is None:
            return None
        head = {name: self.chronological(value[:, :rows]) for name, value in gates.items()}
        if self.mode == "GRU":
            assert self.hh is not None and self.new is not None
            head["hh_new"] = self.chronological(self.hh[:, :rows, 2 * self.new.shape[-1] :])
        return head

    def saturation_gates(self) -> dict[str, Tensor]:
        """The gate activations of every row alive at every step, ``[N, *]`` each, named as
        :func:`gradprobe.recorders.saturation.saturation_fractions` reads them.

        ReLU modes have the outputs in place of the pre-activations: they are
        zero (ReLU) or negative (leaky ReLU) exactly where the pre-activation
        is at most zero, all that the saturation of a ReLU counts.
        """
        h = self.h[1:]
        gates = self._gates() or {"leaky_relu_pre" if self.mode == "RNN_LEAKY_RELU" else "relu_pre": h}
        if self.sizes is None:
            return {name: value.reshape(-1, value.shape[-1]) for name, value in gates.items()}
        batch = h.shape[1]
        alive = torch.arange(batch, device=h.device) < torch.tensor(self.sizes, device=h.device).unsqueeze(1)
        return {name: value[alive] for name, value in gates.items()}


@dataclass
class SweepResult:
    """What the backward sweep measured on one direction (chronological where per step)."""

    grad_norms: list[float]
    profile: list[float]
    lyapunov: list[float]


# --------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------

#: Below this many elements torch's tanh is cheaper than ``2 sigmoid(2x) - 1``.
_TANH_DIRECT_BELOW = 4096


def _tanh_by_sigmoid(x: Tensor) -> bool:
    """Whether ``tanh(x)`` is cheaper as ``2 sigmoid(2x) - 1`` (large single-precision tensors: torch's CPU
    sigmoid is ~3x faster than its tanh)."""
    return x.dtype == torch.float32 and x.numel() >= _TANH_DIRECT_BELOW


def _tanh(x: Tensor, out: Tensor) -> Tensor:
    """``tanh(x)`` into ``out``, through the sigmoid where that is cheaper (:func:`_tanh_by_sigmoid`)."""
    if not _tanh_by_sigmoid(x):
        return torch.tanh(x, out=out)
    return torch.sigmoid(x * 2, out=out).mul_(2).sub_(1)


def _carry(states: tuple[Tensor, ...], sizes: list[int] | None, t: int) -> None:
    """Rows past ``sizes[t]`` (ended, or in a reverse direction not yet started) keep the state of step ``t``."""
    if sizes is not None and sizes[t] < states[0].shape[0]:
        states[t + 1][sizes[t] :] = states[t][sizes[t] :]


def _project(
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
    pre, x_head, sizes = _project(mode, x, w, reverse, head_rows, sizes)
    steps, batch = pre.shape[0], pre.shape[1]
    h = h0.new_empty(steps + 1, *h0.shape)
    h[0] = h0
    hs = h.unbind(0)
    w_hh_t = w.weight_hh.t()
    run = DirectionRun(name, mode, w, reverse, x_head, h, sizes=sizes)
    if mode == "LSTM":
        assert c0 is not None
        hidden = c0.shape[-1]
        c = c0.new_empty(steps + 1, *c0.shape)
        c[0] = c0
        tanh_c = c0.new_empty(steps, *c0.shape)
        cs, tcs = c.unbind(0), tanh_c.unbind(0)
        w_hr_t = w.weight_hr.t() if w.weight_hr is not None else None
        # the cell candidate's rows scaled by 2, so one sigmoid over all gates gives tanh(a) = 2 sigmoid(2a) - 1 there
        pre[..., 2 * hidden : 3 * hidden] *= 2
        w_hh_t = w.weight_hh.t().clone()
        w_hh_t[:, 2 * hidden : 3 * hidden] *= 2
        # per-step views of each gate, made once (slicing in the loop costs more than the arithmetic at small sizes)
        i_s, f_s, g_s, o_s = (gate.unbind(0) for gate in pre.view(steps, batch, 4, hidden).unbind(2))
        for t, gates in enumerate(pre.unbind(0)):  # pre-activations become activations in place
            gates.addmm_(hs[t], w_hh_t).sigmoid_()
            # c' = f c + i g with g = 2 s - 1 (s the sigmoid of the doubled pre-activation): f c - i + 2 i s
            torch.addcmul(torch.addcmul(i_s[t].neg(), i_s[t], g_s[t], value=2), f_s[t], cs[t], out=cs[t + 1])
            _tanh(cs[t + 1], out=tcs[t])
            if w_hr_t is None:
                torch.mul(o_s[t], tcs[t], out=hs[t + 1])
            else:
                torch.mm(o_s[t] * tcs[t], w_hr_t, out=hs[t + 1])
            _carry(hs, sizes, t)
            _carry(cs, sizes, t)
        pre[..., 2 * hidden : 3 * hidden].mul_(2).sub_(1)  # the candidate's tanh, for the sweep
        run.activations, run.c, run.tanh_c = pre, c, tanh_c
    elif mode == "GRU":
        hidden = h0.shape[-1]
        hh = pre.new_empty(pre.shape)
        new = pre.new_empty(steps, batch, hidden)
        b_hh = w.bias_hh
        rz_all = pre[..., : 2 * hidden]
        x_n, rzs, ns = pre[..., 2 * hidden :].unbind(0), rz_all.unbind(0), new.unbind(0)
        for t, hh_t in enumerate(hh.unbind(0)):
            if b_hh is None:
                torch.mm(hs[t], w_hh_t, out=hh_t)
            else:
                torch.addmm(b_hh, hs[t], w_hh_t, out=hh_t)
            rz = rzs[t].add_(hh_t[:, : 2 * hidden]).sigmoid_()
            _tanh(torch.addcmul(x_n[t], rz[:, :hidden], hh_t[:, 2 * hidden :]), out=ns[t])
            torch.lerp(ns[t], hs[t], rz[:, hidden:], out=hs[t + 1])
            _carry(hs, sizes, t)
        run.activations, run.hh, run.new = rz_all, hh, new
    else:
        activation = _activation(mode)
        for t, pre_t in enumerate(pre.unbind(0)):
            pre_t.addmm_(hs[t], w_hh_t)
            activation(pre_t, hs[t + 1])
            _carry(hs, sizes, t)
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
    if mode in ("LSTM", "GRU"):
        pre, x_head, sizes = _project(mode, x, w, reverse, head_rows, sizes)
    else:  # a plain RNN's slopes come from its known outputs: only the head rows' projections are needed
        pre, x_head, sizes = _project(mode, x[:, :head_rows], w, reverse, head_rows, sizes)
    steps, batch = outputs.shape[0], outputs.shape[1]
    h = torch.cat([h0.unsqueeze(0), (outputs.flip(0) if reverse else outputs).to(h0.dtype)])
    if sizes is not None:
        hs = h.unbind(0)
        for t in range(steps):
            _carry(hs, sizes, t)
    previous = h[:-1].reshape(steps * batch, -1)
    run = DirectionRun(name, mode, w, reverse, x_head, h, sizes=sizes)
    if mode == "LSTM":
        assert c0 is not None
        hidden = c0.shape[-1]
        i, f, g, _ = pre.split(hidden, dim=-1)
        if _tanh_by_sigmoid(g):
            # the candidate's rows doubled: one sigmoid over all gates gives its tanh as 2 sigmoid(2a) - 1
            w_hh_t = w.weight_hh.t().clone()
            w_hh_t[:, 2 * hidden : 3 * hidden] *= 2
            g.mul_(2)
            pre.view(steps * batch, -1).addmm_(previous, w_hh_t).sigmoid_()
            g.mul_(2).sub_(1)
        else:
            pre.view(steps * batch, -1).addmm_(previous, w.weight_hh.t())
            pre[..., : 2 * hidden].sigmoid_()
            pre[..., 3 * hidden :].sigmoid_()
            torch.tanh(g, out=g)
        update = i * g
        c = c0.new_empty(steps + 1, *c0.shape)
        c[0] = c0
        cs, fs, us = c.unbind(0), f.unbind(0), update.unbind(0)
        for t in range(steps):
            torch.addcmul(us[t], fs[t], cs[t], out=cs[t + 1])
            _carry(cs, sizes, t)
        run.activations, run.c, run.tanh_c = pre, c, _tanh(c[1:], out=torch.empty_like(c[1:]))
    elif mode == "GRU":
        hidden = h0.shape[-1]
        hh = (
            torch.mm(previous, w.weight_hh.t())
            if w.bias_hh is None
            else torch.addmm(w.bias_hh, previous, w.weight_hh.t())
        )
        hh = hh.view(steps, batch, -1)
        rz = pre[..., : 2 * hidden].add_(hh[..., : 2 * hidden]).sigmoid_()
        candidate = torch.addcmul(pre[..., 2 * hidden :], rz[..., :hidden], hh[..., 2 * hidden :])
        run.activations, run.hh, run.new = rz, hh, _tanh(candidate, out=candidate)
    return run


def _activation(mode: str) -> Any:
    if mode == "RNN_TANH":
        return _tanh
    if mode == "RNN_RELU":
        return lambda pre, out: torch.clamp_min(pre, 0, out=out)
    return lambda pre, out: torch.where(pre > 0, pre, pre * fn.LEAKY_SLOPE, out=out)


# --------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------


class _Factors:
    """The derivative factors of the steps ``start .. stop - 1``, laid out on the sweep's rows.

    The first rows repeat batch rows (the profile's ``profile_rows`` rows
    ``0 .. R-1``, then row 0 for each of the ``lyapunov_rows`` Lyapunov
    vectors), the batch follows. Each factor is computed on the batch rows
    straight into its buffer, and only the first rows are copied.
    """

    def __init__(
        self,
        run: DirectionRun,
        start: int,
        stop: int,
        profile_rows: int,
        lyapunov_rows: int,
        dead: Tensor | None = None,
    ) -> None:
        """``dead``: ``[span, B]``, the batch rows not alive at those steps (packed input). The sweep does not
        step them; only ``keep_n``, read for the input gradient of every row, is zero there."""
        batch = run.h.shape[1]
        self._span, self._batch = stop - start, batch
        self._profile, self._extra = profile_rows, profile_rows + lyapunov_rows
        if run.mode == "LSTM":
            assert run.activations is not None and run.c is not None and run.tanh_c is not None
            act = run.activations[start:stop]
            hidden = act.shape[-1] // 4
            i, f, g, o = act.split(hidden, dim=-1)
            tc = run.tanh_c[start:stop]
            dgates, main = self._buffer(4 * hidden, act)
            # fn.Linearization's factors, written in place into the row layout (that one must stay differentiable)
            torch.addcmul(act, act, act, value=-1, out=main)  # a (1 - a) for every gate; the candidate's is replaced
            d_i, d_f, d_g, d_o = main.split(hidden, dim=-1)
            torch.addcmul(i, i * g, g, value=-1, out=d_g)  # i (1 - g^2)
            d_i.mul_(g)
            d_f.mul_(run.c[start:stop])
            d_o.mul_(tc)
            through_c, main = self._buffer(hidden, act)
            torch.addcmul(o, o * tc, tc, value=-1, out=main)  # o (1 - tanh(c)^2)
            forget, main = self._buffer(hidden, act)
            main.copy_(f)
            self.dgates, self.through_c, self.forget = (self._fill(t).unbind(0) for t in (dgates, through_c, forget))
        elif run.mode == "GRU":
            assert run.activations is not None and run.hh is not None and run.new is not None
            r, z = run.activations[start:stop].chunk(2, dim=-1)
            n = run.new[start:stop]
            h_n = run.hh[start:stop, :, 2 * r.shape[-1] :]
            keep_n = torch.addcmul(1 - z, n * n, z - 1)  # (1 - z)(1 - n^2)
            if dead is not None:
                keep_n.masked_fill_(dead.unsqueeze(-1), 0)
            # cotangents of the (r, z, n) parts of W_hh h are v times these, all three at once
            to_hidden, main = self._buffer(3 * r.shape[-1], r)
            d_r, d_z, d_n = main.view(self._span, batch, 3, -1).unbind(2)
            torch.mul(keep_n * h_n, torch.addcmul(r, r, r, value=-1), out=d_r)
            torch.mul(run.h[start:stop] - n, torch.addcmul(z, z, z, value=-1), out=d_z)
            torch.mul(keep_n, r, out=d_n)
            update, main = self._buffer(r.shape[-1], r)
            main.copy_(z)
            self.to_hidden = self._fill(to_hidden).view(self._span, -1, 3, r.shape[-1]).unbind(0)
            self.update = self._fill(update).unbind(0)
            self.keep_n = keep_n  # batch rows only: the input's n pre-activation
        else:
            y = run.h[start + 1 : stop + 1]
            slope, main = self._buffer(y.shape[-1], y)
            if fn.is_relu(run.mode):  # an (leaky) ReLU output has the sign of its pre-activation
                main.copy_(fn._relu_slope(y, run.mode == "RNN_LEAKY_RELU"))
            else:
                torch.addcmul(y.new_ones(()), y, y, value=-1, out=main)  # 1 - y^2, the one broadcast
            self.slope = self._fill(slope).unbind(0)

    def _buffer(self, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """A ``[span, rows, width]`` factor and its batch rows."""
        buffer = like.new_empty(self._span, self._extra + self._batch, width)
        return buffer, buffer[:, self._extra :]

    def _fill(self, buffer: Tensor) -> Tensor:
        r, e = self._profile, self._extra
        buffer[:, :r] = buffer[:, e : e + r]  # two slice copies: cheaper than one index_select here
        buffer[:, r:e] = buffer[:, e : e + 1]
        return buffer


class _LyapunovPeriods:
    """When the backward sweep re-orthonormalizes its Lyapunov vectors, and the exponents from its QR steps.

    Between two QR steps the vectors grow at their own rates; the QR must come
    before the fastest outgrows the slowest beyond floating-point resolution
    (or any of them leaves it), and each costs ~25 µs on the CPU. After each QR
    step the ratio of the largest to the smallest ``|R_ii|`` gives how fast
    they pulled apart per step, and the next period lets them pull apart by at most
    :data:`LYAPUNOV_SPREAD` and grow or shrink by at most
    :data:`LYAPUNOV_RANGE`, growing at most twofold and shrinking at once
    (down to one step), from :data:`LYAPUNOV_FIRST` up to
    :data:`LYAPUNOV_MAX_EVERY`. On the CPU that costs one tiny read-back per QR
    step; elsewhere, where a read-back would stall the device's queue, the
    period stays at :data:`LYAPUNOV_EVERY`. The exponents are read from all
    diagonals at once at the end, and they do not depend on the
    periods: the diagonal of a product of triangular factors is the product of
    their diagonals.
    """

    def __init__(self, device: torch.device, steps: int) -> None:
        self.steps, self.burn_in = steps, steps // 10
        self.adapt = device.type == "cpu" and LYAPUNOV_MAX_EVERY > LYAPUNOV_EVERY
        self.period = min(LYAPUNOV_FIRST, LYAPUNOV_MAX_EVERY) if self.adapt else LYAPUNOV_EVERY
        self.last = 0  # steps swept at the last QR step
        self.diagonals: list[Tensor] = []  # of the R factors, in processing order back from the end
        self.covered: list[int] = []  # steps each QR step covers

    def due(self, done: int) -> bool:
        """Whether a QR step follows the ``done``-th swept step (always at the end of the burn-in, so that it
        drops exactly ``steps // 10`` steps whatever the periods, and at the last step)."""
        return done - self.last >= self.period or done == self.steps or done == self.burn_in

    def add(self, upper: Tensor, done: int) -> None:
        """Keep the R factor of the QR step after the ``done``-th swept step and choose the next period."""
        span = done - self.last
        self.covered.append(span)
        self.last = done
        self.diagonals.append(upper.diagonal())
        if not self.adapt:
            return
        sizes = [abs(value) for value in self.diagonals[-1].tolist()]
        if not all(0 < size < math.inf for size in sizes):  # a vector lost (or NaN): every step from now on
            self.period = 1
            return
        logs = [math.log(size) for size in sizes]
        spread = max(logs) - min(logs)
        change = max(abs(value) for value in logs)
        allowed = min(
            span * math.log(LYAPUNOV_SPREAD) / spread if spread > 0 else math.inf,
            span * math.log(LYAPUNOV_RANGE) / change if change > 0 else math.inf,
        )
        self.period = max(1, min(int(min(allowed, LYAPUNOV_MAX_EVERY)), 2 * self.period))

    def exponents(self) -> list[float]:
        """``lambda_i = mean log |R_ii|`` over the steps after the burn-in (``steps // 10``), largest first;
        empty without QR steps (no Lyapunov vectors)."""
        if not self.covered:
            return []
        burn, dropped = 0, 0
        while dropped < self.burn_in:  # a QR step falls at its end, and the last one after it
            dropped += self.covered[burn]
            burn += 1
        tiny = torch.finfo(torch.float64).tiny
        logs = torch.stack(self.diagonals[burn:]).double().abs().clamp_min(tiny).log()
        return (logs.sum(dim=0) / (self.steps - dropped)).sort(descending=True).values.tolist()


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
    mode, w = run.mode, run.weights
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
    periods = _LyapunovPeriods(device, steps)

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
        factors = _Factors(run, first, stop, r, k, dead[first:stop] if dead is not None else None)
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
            if mode == "LSTM":
                raw = vh.matmul(w.weight_hr) if w.weight_hr is not None else vh
                vc = torch.addcmul(cut(cs[j + 1]), raw, cut(factors.through_c[j]))
                # concatenated, then scaled in place: cheaper here than two strided products
                delta = torch.cat([vc, vc, vc, raw], dim=1, out=out).mul_(cut(factors.dgates[j]))
                into.addmm_(delta, w.weight_hh)
                cut(cs[j]).addcmul_(vc, cut(factors.forget[j]))
            elif mode == "GRU":
                by_part = torch.mul(
                    vh.unsqueeze(1), cut(factors.to_hidden[j]), out=out.view(n, 3, -1) if out is not None else None
                )
                into.addmm_(by_part.flatten(1), w.weight_hh).addcmul_(vh, cut(factors.update[j]))
            else:
                delta = torch.mul(vh, cut(factors.slope[j]), out=out)
                into.addmm_(delta, w.weight_hh)
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
            if mode == "GRU":
                # the input's n pre-activation is outside the reset product: its cotangent is v (1 - z)(1 - n^2)
                gate_grads[..., 2 * out_size :] = v_h[1:, e:] * factors.keep_n
            torch.matmul(gate_grads, w.weight_ih, out=input_grads[first:stop])
        carry_h, carry_c = hs[0], cs[0] if cs else None
    grad_norms = run.chronological(grad_sq.sqrt())
    profile = profile_sq.sqrt().mean(-1).flip(0)  # profile[k]: k steps back from the last state
    lyapunov = periods.exponents()  # empty without Lyapunov vectors (k = 0)
    grads_in = run.chronological(input_grads) if input_grads is not None else None
    return SweepResult(grad_norms.tolist(), profile.tolist(), lyapunov), grads_in


# --------------------------------------------------------------------------
# a whole stack call
# --------------------------------------------------------------------------


class _Packed:
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
class _StackInput:
    """One captured stack call, made ready for the forward pass: padded, time-major, rows in processing order."""

    x: Tensor  # [T, B, I]
    init: Any  # the twin's initial states per layer direction
    known: Tensor | None  # the top layer's outputs [T, B, D*P], when kept
    layout: _Packed | None  # packed input: how to pack and pad
    sizes: list[int] | None  # packed input: rows alive per step
    out_grad: Tensor | None = None
    hn_grad: Tensor | None = None
    cn_grad: Tensor | None = None


def _stack_input(twin: Any, call: Any, dtype: torch.dtype, rows: int | None = None) -> _StackInput:
    """The call's input, initial state, output and gradients as the forward pass and the sweep take them.

    ``rows``: keep the first rows only (packed input: the longest sequences).
    """
    grads = list(call.grads) + [None] * (3 - len(call.grads))
    out_grad, hn_grad, cn_grad = grads[0], grads[1], grads[2] if twin.mode == "LSTM" else None
    out_grad = out_grad.detach() if out_grad is not None else None
    known = call.layer_output()  # the top layer's outputs: its forward pass needs no loop over time
    layout: _Packed | None = None
    if isinstance(call.input, PackedSequence):
        layout = _Packed(call.input.batch_sizes.tolist(), call.input.data.device)
        order = call.input.sorted_indices  # initial and final states are in the caller's row order
        x, hx = _detached_input(call.input.data, call.hx, None, False, dtype)
        x = layout.pad(x)
        if order is not None:
            hx = twin._map_hidden(hx, lambda h: h.index_select(1, order)) if hx is not None else None
            hn_grad = hn_grad.index_select(1, order) if hn_grad is not None else None
            cn_grad = cn_grad.index_select(1, order) if cn_grad is not None else None
        out_grad = layout.pad(out_grad) if out_grad is not None else None
        known = layout.pad(known) if known is not None else None
    else:
        x, hx = _detached_input(call.input, call.hx, None, twin.batch_first, dtype)
        if twin.batch_first:
            x = x.transpose(0, 1)
            out_grad = out_grad.transpose(0, 1) if out_grad is not None else None
            known = known.transpose(0, 1) if known is not None else None
    sizes = layout.sizes if layout is not None else None
    if rows is not None:
        x = x[:, :rows]
        hx = twin._map_hidden(hx, lambda h: h[:, :rows]) if hx is not None else None
        known = known[:, :rows] if known is not None else None
        sizes = [min(size, rows) for size in sizes] if sizes is not None else None
    return _StackInput(x, twin._initial_states(x, x.shape[1], hx), known, layout, sizes, out_grad, hn_grad, cn_grad)


def _forward_stack(
    twin: Any, names: list[str], given: _StackInput, params: dict[str, Tensor], head: int, training: bool
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
                    else twin._dropout_mask(layer_input if layout is None else layout.pack(layer_input))
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
    given = _stack_input(twin, call, dtype, rows)
    with torch.no_grad():
        runs, _ = _forward_stack(twin, names, given, params, given.x.shape[1], training=False)
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
    given = _stack_input(twin, call, dtype)
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
        runs, masks = _forward_stack(twin, names, given, params, head, training=call.training)

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
