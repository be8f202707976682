"""Step functions and analytic per-step Jacobians of the recurrent cells.

Everything here is plain tensor arithmetic written out the way the torch.nn
documentation states the equations, so that it doubles as executable ground
truth. A *state* is a tuple: ``(h,)`` for RNN and GRU, ``(h, c)`` for LSTM.

The input projection ``W_ih x_t + b_ih`` does not depend on the state, so the
layer loops compute it for all time steps in one matrix product and the step
functions take it precomputed (``x_proj``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# the vocabulary of cell modes (gate counts and names, saturation limits) lives in gradprobe.cell_modes: no torch
from gradprobe.cell_modes import LEAKY_SLOPE, is_relu

State = tuple[Tensor, ...]


class LayerWeights(NamedTuple):
    """The parameters of one direction of one recurrent layer, torch.nn layout."""

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None = None
    bias_hh: Tensor | None = None
    weight_hr: Tensor | None = None


def project_input(mode: str, x: Tensor, w: LayerWeights) -> Tensor:
    """``W_ih x + b_ih`` for any number of leading dimensions.

    For RNN and LSTM the recurrent bias ``b_hh`` is folded in as well, since it
    enters the pre-activation additively; GRU keeps ``b_hn`` inside the reset
    gate product, so it is added in :func:`step` instead.
    """
    bias = w.bias_ih
    if mode != "GRU" and w.bias_hh is not None:
        bias = w.bias_hh if bias is None else bias + w.bias_hh
    return F.linear(x, w.weight_ih, bias)


def _recurrent_bias(mode: str, w: LayerWeights, folded: bool) -> Tensor | None:
    return None if (folded and mode != "GRU") else w.bias_hh


def step(mode: str, x_proj: Tensor, state: State, w: LayerWeights, folded: bool = True) -> State:
    """Advance the state one time step.

    Args:
        mode: One of :data:`MODES`.
        x_proj: The input projection for this step, ``[B, G*H]``.
        state: ``(h,)`` or ``(h, c)`` with batch dimension first.
        w: The layer weights.
        folded: Whether ``x_proj`` already includes ``b_hh`` (as produced by
            :func:`project_input`). Irrelevant for GRU.
    """
    b_hh = _recurrent_bias(mode, w, folded)
    if mode == "LSTM":
        return lstm_step(x_proj, state[0], state[1], w.weight_hh, b_hh, w.weight_hr)
    if mode == "GRU":
        return (gru_step(x_proj, state[0], w.weight_hh, b_hh),)
    return (rnn_step(x_proj, state[0], w.weight_hh, b_hh, relu=is_relu(mode), leaky=mode == "RNN_LEAKY_RELU"),)


def preactivation(x_proj: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> Tensor:
    """``x_proj + W_hh h (+ b_hh)``: the gate pre-activations of RNN and LSTM."""
    pre = torch.addmm(x_proj, h, weight_hh.t())
    return pre if bias_hh is None else pre + bias_hh


def rnn_step(
    x_proj: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, relu: bool, leaky: bool = False
) -> Tensor:
    """Elman step ``h' = act(x_proj + W_hh h + b_hh)`` (tanh, ReLU, or leaky ReLU with :data:`LEAKY_SLOPE`)."""
    pre = preactivation(x_proj, h, weight_hh, bias_hh)
    if leaky:
        return F.leaky_relu(pre, LEAKY_SLOPE)
    return torch.relu(pre) if relu else torch.tanh(pre)


def relu_slope(pre: Tensor, leaky: bool) -> Tensor:
    """The derivative of (leaky) ReLU at ``pre`` (1 where positive, else 0 or :data:`LEAKY_SLOPE`)."""
    positive = (pre > 0).to(pre.dtype)
    return positive + (1 - positive) * LEAKY_SLOPE if leaky else positive


def lstm_step(
    x_proj: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor | None,
    weight_hr: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """LSTM step with gate order (input, forget, cell, output) and optional projection."""
    gates = preactivation(x_proj, h, weight_hh, bias_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c_next = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
    h_next = torch.sigmoid(o) * torch.tanh(c_next)
    if weight_hr is not None:
        h_next = h_next.matmul(weight_hr.t())
    return h_next, c_next


def gru_step(x_proj: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> Tensor:
    """GRU step with gate order (reset, update, new), ``b_hn`` inside the reset product."""
    hh = F.linear(h, weight_hh, bias_hh)
    x_r, x_z, x_n = x_proj.chunk(3, dim=1)
    h_r, h_z, h_n = hh.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return n + z * (h - n)


def gate_activations(
    mode: str, x_proj: Tensor, state: State, w: LayerWeights, folded: bool = True
) -> dict[str, Tensor]:
    """Post-activation gate values of one step, keyed by gate name.

    LSTM: ``input``, ``forget``, ``output`` (sigmoid), ``cell`` (tanh of the
    candidate) and ``cell_state`` (tanh of the new cell state). GRU: ``reset``,
    ``update`` (sigmoid), ``new`` (tanh). RNN: ``tanh`` or ``relu_pre`` (the
    ReLU pre-activation, whose sign tells dead units). Computed by
    :class:`Linearization`, which needs the same values.
    """
    return Linearization(mode, x_proj, state, w, folded).gates


def output_of(state: State) -> Tensor:
    """The part of the state that is the layer's output (``h``)."""
    return state[0]


# --------------------------------------------------------------------------
# Analytic Jacobians d state_t / d state_{t-1}
# --------------------------------------------------------------------------


def jacobian(mode: str, x_proj: Tensor, state: State, w: LayerWeights, folded: bool = True) -> Tensor:
    """Per-step Jacobian ``d state_t / d state_{t-1}``, shape ``[B, S, S]``.

    For LSTM the state is the concatenation ``(h, c)``, so ``S = P + H`` where
    ``P`` is ``proj_size`` (or ``H`` without projection).
    """
    b_hh = _recurrent_bias(mode, w, folded)
    if mode == "LSTM":
        return lstm_jacobian(x_proj, state[0], state[1], w.weight_hh, b_hh, w.weight_hr)
    if mode == "GRU":
        return gru_jacobian(x_proj, state[0], w.weight_hh, b_hh)
    return rnn_jacobian(x_proj, state[0], w.weight_hh, b_hh, relu=is_relu(mode), leaky=mode == "RNN_LEAKY_RELU")


def rnn_jacobian(
    x_proj: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, relu: bool, leaky: bool = False
) -> Tensor:
    """``diag(act'(pre)) W_hh``."""
    pre = preactivation(x_proj, h, weight_hh, bias_hh)
    slope = relu_slope(pre, leaky) if relu else 1 - torch.tanh(pre) ** 2
    return slope.unsqueeze(2) * weight_hh.unsqueeze(0)


def lstm_jacobian(
    x_proj: Tensor,
    h: Tensor,
    c: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor | None,
    weight_hr: Tensor | None,
) -> Tensor:
    """Joint Jacobian of ``(h_t, c_t)`` with respect to ``(h_{t-1}, c_{t-1})``."""
    gates = preactivation(x_proj, h, weight_hh, bias_hh)
    a_i, a_f, a_g, a_o = gates.chunk(4, dim=1)
    w_i, w_f, w_g, w_o = (w.unsqueeze(0) for w in weight_hh.chunk(4, dim=0))
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    c_next = f * c + i * g
    tc = torch.tanh(c_next)

    dc_dh = _col(c * f * (1 - f)) * w_f + _col(g * i * (1 - i)) * w_i + _col(i * (1 - g**2)) * w_g
    dc_dc = torch.diag_embed(f)
    through_c = o * (1 - tc**2)
    dhraw_dh = _col(tc * o * (1 - o)) * w_o + _col(through_c) * dc_dh
    dhraw_dc = torch.diag_embed(through_c * f)
    if weight_hr is not None:
        dh_dh = weight_hr.matmul(dhraw_dh)
        dh_dc = weight_hr.matmul(dhraw_dc)
    else:
        dh_dh, dh_dc = dhraw_dh, dhraw_dc
    top = torch.cat([dh_dh, dh_dc], dim=2)
    bottom = torch.cat([dc_dh, dc_dc], dim=2)
    return torch.cat([top, bottom], dim=1)


def _col(v: Tensor) -> Tensor:
    """A batch of vectors as column factors ``[B, H, 1]``."""
    return v.unsqueeze(2)


def gru_jacobian(x_proj: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None) -> Tensor:
    """Jacobian of ``h_t = (1 - z) n + z h_{t-1}`` with respect to ``h_{t-1}``."""
    hh = F.linear(h, weight_hh, bias_hh)
    x_r, x_z, x_n = x_proj.chunk(3, dim=1)
    h_r, h_z, h_n = hh.chunk(3, dim=1)
    w_r, w_z, w_n = (w.unsqueeze(0) for w in weight_hh.chunk(3, dim=0))
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)

    dr_dh = _col(r * (1 - r)) * w_r
    dz_dh = _col(z * (1 - z)) * w_z
    dn_dh = _col(1 - n**2) * (_col(h_n) * dr_dh + _col(r) * w_n)
    return _col(1 - z) * dn_dh + _col(h - n) * dz_dh + torch.diag_embed(z)


def state_size(mode: str, hidden_size: int, proj_size: int = 0) -> int:
    """Length ``S`` of the flattened state that :func:`jacobian` differentiates."""
    out = proj_size or hidden_size
    return out + hidden_size if mode == "LSTM" else out


def flatten_state(state: State) -> Tensor:
    """Concatenate a state tuple along the feature dimension."""
    return state[0] if len(state) == 1 else torch.cat(state, dim=-1)


def unflatten_state(mode: str, flat: Tensor, hidden_size: int, proj_size: int = 0) -> State:
    """Inverse of :func:`flatten_state`."""
    if mode != "LSTM":
        return (flat,)
    out = proj_size or hidden_size
    return flat[..., :out], flat[..., out:]


# --------------------------------------------------------------------------
# Analytic Jacobian-vector products (no Jacobian is ever formed)
# --------------------------------------------------------------------------


def _columns(out: Tensor | None, start: int, stop: int | None) -> Tensor | None:
    """Columns ``start:stop`` of ``out`` to write a result into, or ``None`` (a new tensor) without ``out``."""
    return out[:, start:stop] if out is not None else None


class Linearization:
    """The step ``S_t = step(x_proj, S_{t-1})`` linearized at many rows at once.

    Precomputes gate values for ``N`` rows, then applies ``J u`` and
    ``J^T w`` for flat state vectors ``[N, S]`` with one matrix product each.
    ``rows`` selects a subset of the rows (e.g. one time step) for chained
    products.

    Attributes:
        gates: Post-activation gate values, as :func:`gate_activations` returns.
    """

    def __init__(self, mode: str, x_proj: Tensor, state: State, w: LayerWeights, folded: bool = True) -> None:
        self.mode = mode
        self.w = w
        b_hh = _recurrent_bias(mode, w, folded)
        h = state[0]
        self.out_size = h.shape[-1]
        if mode == "LSTM":
            gates = preactivation(x_proj, h, w.weight_hh, b_hh)
            a_i, a_f, a_g, a_o = gates.chunk(4, dim=1)
            i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
            self._lstm_factors(i, f, g, o, torch.tanh(f * state[1] + i * g), state[1])
        elif mode == "GRU":
            hh = F.linear(h, w.weight_hh, b_hh)
            x_r, x_z, x_n = x_proj.chunk(3, dim=1)
            h_r, h_z, h_n = hh.chunk(3, dim=1)
            r = torch.sigmoid(x_r + h_r)
            z = torch.sigmoid(x_z + h_z)
            self._gru_factors(r, z, torch.tanh(x_n + r * h_n), h_n, h)
        else:
            pre = preactivation(x_proj, h, w.weight_hh, b_hh)
            if is_relu(mode):
                leaky = mode == "RNN_LEAKY_RELU"
                self.gates = {"leaky_relu_pre" if leaky else "relu_pre": pre}
                self._slope = relu_slope(pre, leaky)
            else:
                self._tanh_factors(torch.tanh(pre))

    @classmethod
    def from_gates(
        cls, mode: str, w: LayerWeights, state: State, gates: dict[str, Tensor], hh_new: Tensor | None = None
    ) -> Linearization | None:
        """The linearization from gate activations a forward pass already computed: no matrix product.

        Args:
            mode: ``LSTM``, ``GRU`` or ``RNN_TANH`` (a ReLU's pre-activation is
                not recoverable from its output: ``None`` for those modes).
            w: The layer weights.
            state: The state each row started from.
            gates: As :attr:`gates` holds them (LSTM with ``cell_state``).
            hh_new: GRU: ``W_hn h + b_hn``, the recurrent part inside the reset product.
        """
        if mode not in ("LSTM", "GRU", "RNN_TANH"):
            return None
        lin = object.__new__(cls)
        lin.mode, lin.w, lin.out_size = mode, w, state[0].shape[-1]
        if mode == "LSTM":
            lin._lstm_factors(
                gates["input"], gates["forget"], gates["cell"], gates["output"], gates["cell_state"], state[1]
            )
        elif mode == "GRU":
            assert hh_new is not None
            lin._gru_factors(gates["reset"], gates["update"], gates["new"], hh_new, state[0])
        else:
            lin._tanh_factors(gates["tanh"])
        return lin

    def _lstm_factors(self, i: Tensor, f: Tensor, g: Tensor, o: Tensor, tc: Tensor, c: Tensor) -> None:
        self.gates = {"input": i, "forget": f, "cell": g, "output": o, "cell_state": tc}
        # derivative factors of (c', c', c', h_raw) with respect to the (i, f, g, o) pre-activations
        self._dgates = torch.cat([g * i * (1 - i), c * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], dim=1)
        self._f = f
        self._through_c = o * (1 - tc * tc)

    def _tanh_factors(self, y: Tensor) -> None:
        self.gates = {"tanh": y}
        self._slope = 1 - y * y

    def _gru_factors(self, r: Tensor, z: Tensor, n: Tensor, h_n: Tensor, h: Tensor) -> None:
        self.gates = {"reset": r, "update": z, "new": n}
        self._r, self._z, self._hn = r, z, h_n
        self._dr = r * (1 - r)
        self._dz = z * (1 - z)
        self._dn = 1 - n * n
        self._h_minus_n = h - n

    def subset(self, index: Tensor) -> Linearization:
        """The same linearization restricted to the rows in ``index`` (no recomputation)."""
        part = object.__new__(Linearization)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                value = value[index]
            elif isinstance(value, dict):
                value = {k: v[index] for k, v in value.items()}
            setattr(part, name, value)
        return part

    def jvp(self, u: Tensor, rows: slice = slice(None)) -> Tensor:
        """``J u`` for flat state vectors ``u`` of the selected rows."""
        w = self.w
        if self.mode == "LSTM":
            u_h, u_c = u[:, : self.out_size], u[:, self.out_size :]
            rows_n, hidden = u_c.shape
            gates = (u_h.matmul(w.weight_hh.t()) * self._dgates[rows]).view(rows_n, 4, hidden)
            # (dh, dc) written in place, with no concatenation, unless a projection follows or a gradient is
            # recorded (out= is not differentiable)
            out = u.new_empty(rows_n, 2 * hidden) if w.weight_hr is None and not torch.is_grad_enabled() else None
            dc = torch.addcmul(gates[:, :3].sum(dim=1), self._f[rows], u_c, out=_columns(out, hidden, None))
            dh = torch.addcmul(gates[:, 3], self._through_c[rows], dc, out=_columns(out, 0, hidden))
            if out is not None:
                return out
            dh = dh.matmul(w.weight_hr.t()) if w.weight_hr is not None else dh
            return torch.cat([dh, dc], dim=1)
        if self.mode == "GRU":
            d = u.matmul(w.weight_hh.t())
            d_r, d_z, d_hn = d.chunk(3, dim=1)
            dr = self._dr[rows] * d_r
            dz = self._dz[rows] * d_z
            dn = self._dn[rows] * (dr * self._hn[rows] + self._r[rows] * d_hn)
            return (1 - self._z[rows]) * dn + self._h_minus_n[rows] * dz + self._z[rows] * u
        return self._slope[rows] * u.matmul(w.weight_hh.t())

    def vjp(self, v: Tensor, rows: slice = slice(None)) -> Tensor:
        """``J^T v`` (as row vectors ``v^T J``) for the selected rows."""
        return self.vjp_parts(v, rows)[0]

    def vjp_parts(self, v: Tensor, rows: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """``(v^T dS'/dS, v^T dS'/dx_proj)``: cotangents of the previous state and of the projected input."""
        w = self.w
        if self.mode == "LSTM":
            v_h, v_c = v[:, : self.out_size], v[:, self.out_size :]
            v_raw = v_h.matmul(w.weight_hr) if w.weight_hr is not None else v_h
            v_c = torch.addcmul(v_c, v_raw, self._through_c[rows])
            v_gates = torch.cat([v_c, v_c, v_c, v_raw], dim=1).mul_(self._dgates[rows])
            # (state h, state c) written in place unless a gradient is recorded (out= is not differentiable)
            out = None if torch.is_grad_enabled() else v.new_empty(v.shape[0], v_h.shape[1] + v_c.shape[1])
            state_h = torch.mm(v_gates, w.weight_hh, out=_columns(out, 0, v_h.shape[1]))
            state_c = torch.mul(v_c, self._f[rows], out=_columns(out, v_h.shape[1], None))
            return (out if out is not None else torch.cat([state_h, state_c], dim=1)), v_gates
        if self.mode == "GRU":
            v_n = v * (1 - self._z[rows]) * self._dn[rows]
            v_r = v_n * self._hn[rows] * self._dr[rows]
            v_z = v * self._h_minus_n[rows] * self._dz[rows]
            v_hn = v_n * self._r[rows]
            state = torch.cat([v_r, v_z, v_hn], dim=1).matmul(w.weight_hh) + v * self._z[rows]
            return state, torch.cat([v_r, v_z, v_n], dim=1)
        v_pre = v * self._slope[rows]
        return v_pre.matmul(w.weight_hh), v_pre
