"""The cell math of the sweep, one class per cell: its forward pass, its derivative factors, its step product.

Each :class:`CellSweep` runs one layer direction forward (:meth:`~CellSweep.forward`,
or :meth:`~CellSweep.forward_known` when its outputs are known), lays out the
derivative factors of a chunk of steps on the sweep's rows
(:meth:`~CellSweep.factors`), and those factors take one step of the backward
sweep (:meth:`StepFactors.step_back`): the vector-Jacobian product of every
row, in place. The math is :mod:`gradprobe.reference.functional`'s written
out for speed (fused, in place, without a graph); the sweep is tested against
the autograd replay of the reference step functions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gradprobe.cell_modes import LEAKY_SLOPE, is_relu
from gradprobe.recorders.sweep.run import DirectionRun, carry, tanh_by_sigmoid, tanh_into
from gradprobe.reference import functional as fn
from gradprobe.reference.functional import LayerWeights

Cut = Callable[[Tensor], Tensor]


class FactorRows:
    """Buffers of derivative factors laid out on the sweep's rows.

    The first rows repeat batch rows (the profile's ``profile_rows`` rows
    ``0 .. R-1``, then row 0 for each of the ``lyapunov_rows`` Lyapunov
    vectors), the batch follows. Each factor is computed on the batch rows
    straight into its buffer (:meth:`buffer`), and only the first rows are
    copied (:meth:`fill`).
    """

    def __init__(self, span: int, batch: int, profile_rows: int, lyapunov_rows: int) -> None:
        self.span, self.batch = span, batch
        self.profile, self.extra = profile_rows, profile_rows + lyapunov_rows

    def buffer(self, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """A ``[span, rows, width]`` factor and its batch rows."""
        buffer = like.new_empty(self.span, self.extra + self.batch, width)
        return buffer, buffer[:, self.extra :]

    def fill(self, buffer: Tensor) -> Tensor:
        """Copy the batch rows the first rows repeat."""
        r, e = self.profile, self.extra
        buffer[:, :r] = buffer[:, e : e + r]  # two slice copies: cheaper than one index_select here
        buffer[:, r:e] = buffer[:, e : e + 1]
        return buffer


class StepFactors:
    """The derivative factors of a chunk of steps; :meth:`step_back` takes one step of the sweep."""

    def step_back(
        self,
        j: int,
        w: LayerWeights,
        vh: Tensor,
        into: Tensor,
        c_next: Tensor | None,
        c_into: Tensor | None,
        out: Tensor | None,
        cut: Cut,
        n: int,
    ) -> None:
        """Add ``v^T J`` of step ``j`` (chunk-local) for the rows that step into ``into`` (and ``c_into``).

        Args:
            vh: The ``h`` cotangents after the step (the rows that step).
            into: The ``h`` cotangents before it, added to.
            c_next, c_into: LSTM: the ``c`` cotangents after and before the step.
            out: Where the pre-activation cotangents go (the gradient of the layer input), or ``None``.
            cut: The rows that step, of a per-step factor.
            n: How many rows step.
        """
        raise NotImplementedError

    def input_cotangents(self, gate_grads: Tensor, v: Tensor, hidden: int) -> None:
        """Complete the pre-activation cotangents of the batch rows before they become the input's gradient."""


class CellSweep:
    """One cell's math for the sweep (see the module doc)."""

    mode: str
    #: Whether :meth:`forward_known` needs the input projection of every row (a plain RNN needs the head rows').
    projects_known_rows = True

    def forward(self, run: DirectionRun, pre: Tensor, c0: Tensor | None, sizes: list[int] | None) -> None:
        """Step through time from ``run.h[0]``: fill the states and the activations the sweep reads.

        ``pre`` is the input projection ``[T, B, G]`` in processing order; it becomes the activations in place.
        """
        raise NotImplementedError

    def forward_known(
        self, run: DirectionRun, pre: Tensor, previous: Tensor, c0: Tensor | None, sizes: list[int] | None
    ) -> None:
        """The activations when every ``h_{t-1}`` is known (``previous``: ``[T * B, P]``)."""

    def factors(self, run: DirectionRun, start: int, stop: int, rows: FactorRows, dead: Tensor | None) -> StepFactors:
        """The derivative factors of steps ``start .. stop - 1`` (``dead``: ``[span, B]``, rows not alive)."""
        raise NotImplementedError

    def gates(self, run: DirectionRun) -> dict[str, Tensor] | None:
        """The gate activations of every row and step, ``[T, B, *]`` in processing order, named as
        :attr:`fn.Linearization.gates` names them; ``None`` for ReLU modes."""
        return None

    def head_extras(self, run: DirectionRun, rows: int) -> dict[str, Tensor]:
        """What the linearization of the first ``rows`` rows needs beyond the gates (processing order)."""
        return {}


# --------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------


class LSTMFactors(StepFactors):
    def __init__(self, run: DirectionRun, start: int, stop: int, rows: FactorRows) -> None:
        assert run.activations is not None and run.c is not None and run.tanh_c is not None
        act = run.activations[start:stop]
        hidden = act.shape[-1] // 4
        i, f, g, o = act.split(hidden, dim=-1)
        tc = run.tanh_c[start:stop]
        dgates, main = rows.buffer(4 * hidden, act)
        # fn.Linearization's factors, written in place into the row layout (that one must stay differentiable)
        torch.addcmul(act, act, act, value=-1, out=main)  # a (1 - a) for every gate; the candidate's is replaced
        d_i, d_f, d_g, d_o = main.split(hidden, dim=-1)
        torch.addcmul(i, i * g, g, value=-1, out=d_g)  # i (1 - g^2)
        d_i.mul_(g)
        d_f.mul_(run.c[start:stop])
        d_o.mul_(tc)
        through_c, main = rows.buffer(hidden, act)
        torch.addcmul(o, o * tc, tc, value=-1, out=main)  # o (1 - tanh(c)^2)
        forget, main = rows.buffer(hidden, act)
        main.copy_(f)
        self.dgates, self.through_c, self.forget = (rows.fill(t).unbind(0) for t in (dgates, through_c, forget))

    def step_back(
        self,
        j: int,
        w: LayerWeights,
        vh: Tensor,
        into: Tensor,
        c_next: Tensor | None,
        c_into: Tensor | None,
        out: Tensor | None,
        cut: Cut,
        n: int,
    ) -> None:
        assert c_next is not None and c_into is not None
        raw = vh.matmul(w.weight_hr) if w.weight_hr is not None else vh
        vc = torch.addcmul(cut(c_next), raw, cut(self.through_c[j]))
        # concatenated, then scaled in place: cheaper here than two strided products
        delta = torch.cat([vc, vc, vc, raw], dim=1, out=out).mul_(cut(self.dgates[j]))
        into.addmm_(delta, w.weight_hh)
        cut(c_into).addcmul_(vc, cut(self.forget[j]))


class LSTMSweep(CellSweep):
    mode = "LSTM"

    def forward(self, run: DirectionRun, pre: Tensor, c0: Tensor | None, sizes: list[int] | None) -> None:
        assert c0 is not None
        w, h = run.weights, run.h
        steps, batch = pre.shape[0], pre.shape[1]
        hs = h.unbind(0)
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
            tanh_into(cs[t + 1], out=tcs[t])
            if w_hr_t is None:
                torch.mul(o_s[t], tcs[t], out=hs[t + 1])
            else:
                torch.mm(o_s[t] * tcs[t], w_hr_t, out=hs[t + 1])
            carry(hs, sizes, t)
            carry(cs, sizes, t)
        pre[..., 2 * hidden : 3 * hidden].mul_(2).sub_(1)  # the candidate's tanh, for the sweep
        run.activations, run.c, run.tanh_c = pre, c, tanh_c

    def forward_known(
        self, run: DirectionRun, pre: Tensor, previous: Tensor, c0: Tensor | None, sizes: list[int] | None
    ) -> None:
        assert c0 is not None
        w = run.weights
        steps, batch = pre.shape[0], pre.shape[1]
        hidden = c0.shape[-1]
        i, f, g, _ = pre.split(hidden, dim=-1)
        if tanh_by_sigmoid(g):
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
            carry(cs, sizes, t)
        run.activations, run.c, run.tanh_c = pre, c, tanh_into(c[1:], out=torch.empty_like(c[1:]))

    def factors(self, run: DirectionRun, start: int, stop: int, rows: FactorRows, dead: Tensor | None) -> StepFactors:
        return LSTMFactors(run, start, stop, rows)

    def gates(self, run: DirectionRun) -> dict[str, Tensor] | None:
        assert run.activations is not None and run.tanh_c is not None
        i, f, g, o = run.activations.chunk(4, dim=-1)
        return {"input": i, "forget": f, "cell": g, "output": o, "cell_state": run.tanh_c}


# --------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------


class GRUFactors(StepFactors):
    def __init__(self, run: DirectionRun, start: int, stop: int, rows: FactorRows, dead: Tensor | None) -> None:
        assert run.activations is not None and run.hh is not None and run.new is not None
        r, z = run.activations[start:stop].chunk(2, dim=-1)
        n = run.new[start:stop]
        h_n = run.hh[start:stop, :, 2 * r.shape[-1] :]
        keep_n = torch.addcmul(1 - z, n * n, z - 1)  # (1 - z)(1 - n^2)
        if dead is not None:
            keep_n.masked_fill_(dead.unsqueeze(-1), 0)
        # cotangents of the (r, z, n) parts of W_hh h are v times these, all three at once
        to_hidden, main = rows.buffer(3 * r.shape[-1], r)
        d_r, d_z, d_n = main.view(rows.span, rows.batch, 3, -1).unbind(2)
        torch.mul(keep_n * h_n, torch.addcmul(r, r, r, value=-1), out=d_r)
        torch.mul(run.h[start:stop] - n, torch.addcmul(z, z, z, value=-1), out=d_z)
        torch.mul(keep_n, r, out=d_n)
        update, main = rows.buffer(r.shape[-1], r)
        main.copy_(z)
        self.to_hidden = rows.fill(to_hidden).view(rows.span, -1, 3, r.shape[-1]).unbind(0)
        self.update = rows.fill(update).unbind(0)
        self.keep_n = keep_n  # batch rows only: the input's n pre-activation

    def step_back(
        self,
        j: int,
        w: LayerWeights,
        vh: Tensor,
        into: Tensor,
        c_next: Tensor | None,
        c_into: Tensor | None,
        out: Tensor | None,
        cut: Cut,
        n: int,
    ) -> None:
        by_part = torch.mul(
            vh.unsqueeze(1), cut(self.to_hidden[j]), out=out.view(n, 3, -1) if out is not None else None
        )
        into.addmm_(by_part.flatten(1), w.weight_hh).addcmul_(vh, cut(self.update[j]))

    def input_cotangents(self, gate_grads: Tensor, v: Tensor, hidden: int) -> None:
        # the input's n pre-activation is outside the reset product: its cotangent is v (1 - z)(1 - n^2)
        gate_grads[..., 2 * hidden :] = v * self.keep_n


class GRUSweep(CellSweep):
    mode = "GRU"

    def forward(self, run: DirectionRun, pre: Tensor, c0: Tensor | None, sizes: list[int] | None) -> None:
        w, h = run.weights, run.h
        steps, batch = pre.shape[0], pre.shape[1]
        hs = h.unbind(0)
        w_hh_t = w.weight_hh.t()
        hidden = h.shape[-1]
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
            tanh_into(torch.addcmul(x_n[t], rz[:, :hidden], hh_t[:, 2 * hidden :]), out=ns[t])
            torch.lerp(ns[t], hs[t], rz[:, hidden:], out=hs[t + 1])
            carry(hs, sizes, t)
        run.activations, run.hh, run.new = rz_all, hh, new

    def forward_known(
        self, run: DirectionRun, pre: Tensor, previous: Tensor, c0: Tensor | None, sizes: list[int] | None
    ) -> None:
        w = run.weights
        steps, batch = pre.shape[0], pre.shape[1]
        hidden = run.h.shape[-1]
        hh = (
            torch.mm(previous, w.weight_hh.t())
            if w.bias_hh is None
            else torch.addmm(w.bias_hh, previous, w.weight_hh.t())
        )
        hh = hh.view(steps, batch, -1)
        rz = pre[..., : 2 * hidden].add_(hh[..., : 2 * hidden]).sigmoid_()
        candidate = torch.addcmul(pre[..., 2 * hidden :], rz[..., :hidden], hh[..., 2 * hidden :])
        run.activations, run.hh, run.new = rz, hh, tanh_into(candidate, out=candidate)

    def factors(self, run: DirectionRun, start: int, stop: int, rows: FactorRows, dead: Tensor | None) -> StepFactors:
        return GRUFactors(run, start, stop, rows, dead)

    def gates(self, run: DirectionRun) -> dict[str, Tensor] | None:
        assert run.activations is not None and run.new is not None
        r, z = run.activations.chunk(2, dim=-1)
        return {"reset": r, "update": z, "new": run.new}

    def head_extras(self, run: DirectionRun, rows: int) -> dict[str, Tensor]:
        assert run.hh is not None and run.new is not None
        return {"hh_new": run.hh[:, :rows, 2 * run.new.shape[-1] :]}


# --------------------------------------------------------------------------
# Elman RNN (tanh, ReLU, leaky ReLU)
# --------------------------------------------------------------------------


class RNNFactors(StepFactors):
    def __init__(self, run: DirectionRun, start: int, stop: int, rows: FactorRows) -> None:
        y = run.h[start + 1 : stop + 1]
        slope, main = rows.buffer(y.shape[-1], y)
        if is_relu(run.mode):  # an (leaky) ReLU output has the sign of its pre-activation
            main.copy_(fn.relu_slope(y, run.mode == "RNN_LEAKY_RELU"))
        else:
            torch.addcmul(y.new_ones(()), y, y, value=-1, out=main)  # 1 - y^2, the one broadcast
        self.slope = rows.fill(slope).unbind(0)

    def step_back(
        self,
        j: int,
        w: LayerWeights,
        vh: Tensor,
        into: Tensor,
        c_next: Tensor | None,
        c_into: Tensor | None,
        out: Tensor | None,
        cut: Cut,
        n: int,
    ) -> None:
        delta = torch.mul(vh, cut(self.slope[j]), out=out)
        into.addmm_(delta, w.weight_hh)


def _relu_into(pre: Tensor, out: Tensor) -> Tensor:
    return torch.clamp_min(pre, 0, out=out)


def _leaky_relu_into(pre: Tensor, out: Tensor) -> Tensor:
    return torch.where(pre > 0, pre, pre * LEAKY_SLOPE, out=out)


class RNNSweep(CellSweep):
    """The Elman RNN of one nonlinearity (``RNN_TANH``, ``RNN_RELU``, ``RNN_LEAKY_RELU``)."""

    projects_known_rows = False  # its slopes come from its known outputs

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._activation = tanh_into if mode == "RNN_TANH" else _relu_into if mode == "RNN_RELU" else _leaky_relu_into

    def forward(self, run: DirectionRun, pre: Tensor, c0: Tensor | None, sizes: list[int] | None) -> None:
        hs = run.h.unbind(0)
        w_hh_t = run.weights.weight_hh.t()
        for t, pre_t in enumerate(pre.unbind(0)):
            pre_t.addmm_(hs[t], w_hh_t)
            self._activation(pre_t, hs[t + 1])
            carry(hs, sizes, t)

    def factors(self, run: DirectionRun, start: int, stop: int, rows: FactorRows, dead: Tensor | None) -> StepFactors:
        return RNNFactors(run, start, stop, rows)

    def gates(self, run: DirectionRun) -> dict[str, Tensor] | None:
        return {"tanh": run.h[1:]} if self.mode == "RNN_TANH" else None


_CELLS: dict[str, CellSweep] = {
    "LSTM": LSTMSweep(),
    "GRU": GRUSweep(),
    **{mode: RNNSweep(mode) for mode in ("RNN_TANH", "RNN_RELU", "RNN_LEAKY_RELU")},
}


def cell_sweep(mode: str) -> CellSweep:
    """The sweep of one cell mode (``LSTM``, ``GRU``, ``RNN_TANH``, ``RNN_RELU``, ``RNN_LEAKY_RELU``)."""
    return _CELLS[mode]
