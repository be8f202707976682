"""Single-step cells, drop-in equivalents of torch.nn.RNNCell/LSTMCell/GRUCell.

Besides ``forward`` each cell has :meth:`CellBase.jacobian`, the analytic
per-step Jacobian ``d state_t / d state_{t-1}`` (for LSTM over the joint
``(h, c)`` state).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gradprobe.cell_modes import GATE_COUNT, RNN_NONLINEARITIES
from gradprobe.reference import functional as fn
from gradprobe.reference.functional import LayerWeights, State


class CellBase(nn.Module):
    """Shared parameters, initialization and argument handling of the cells."""

    mode: str

    def __init__(self, input_size: int, hidden_size: int, bias: bool, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        gate_size = GATE_COUNT[self.mode] * hidden_size
        self.weight_ih = nn.Parameter(torch.empty((gate_size, input_size), **factory))
        self.weight_hh = nn.Parameter(torch.empty((gate_size, hidden_size), **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gate_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(gate_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's default: every parameter uniform in ``±1/sqrt(hidden_size)``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    @property
    def weights(self) -> LayerWeights:
        return LayerWeights(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        return s

    def _prepare(self, input: Tensor, hx: Any) -> tuple[Tensor, State, bool]:
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        states: State = () if hx is None else (tuple(hx) if self.mode == "LSTM" else (hx,))
        for index, value in enumerate(states):
            if value.dim() not in (1, 2):
                label = f"hx[{index}]" if self.mode == "LSTM" else "hidden"
                raise ValueError(f"{name}: Expected {label} to be 1D or 2D, got {value.dim()}D instead")
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
            states = tuple(s.unsqueeze(0) for s in states)
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        if not states:
            zeros = input.new_zeros(input.size(0), self.hidden_size)
            states = (zeros, zeros) if self.mode == "LSTM" else (zeros,)
        for value in states:
            if value.shape != (input.size(0), self.hidden_size):
                raise RuntimeError(
                    f"hidden has inconsistent shape: got {list(value.shape)}, expected {[input.size(0), self.hidden_size]}"
                )
        return input, states, batched

    def forward(self, input: Tensor, hx: Any = None) -> Any:
        """Same contract as the torch.nn cell's ``forward``."""
        input, state, batched = self._prepare(input, hx)
        x_proj = fn.project_input(self.mode, input, self.weights)
        out = fn.step(self.mode, x_proj, state, self.weights)
        if not batched:
            out = tuple(s.squeeze(0) for s in out)
        return out if self.mode == "LSTM" else out[0]

    def jacobian(self, x_t: Tensor, state: Any = None) -> Tensor:
        """Analytic ``d state_t / d state_{t-1}`` at input ``x_t`` and state ``state``.

        Args:
            x_t: Input ``[B, input_size]`` (or ``[input_size]``).
            state: ``h`` for RNN/GRU, ``(h, c)`` for LSTM; zeros when ``None``.

        Returns:
            ``[B, S, S]`` (``[S, S]`` for unbatched input) with ``S = H``, or
            ``S = 2H`` for LSTM where rows and columns are ordered ``(h, c)``.
        """
        input, states, batched = self._prepare(x_t, state)
        x_proj = fn.project_input(self.mode, input, self.weights)
        jac = fn.jacobian(self.mode, x_proj, states, self.weights)
        return jac if batched else jac.squeeze(0)


class RNNCell(CellBase):
    """Elman cell; same signature as :class:`torch.nn.RNNCell`."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        if nonlinearity not in RNN_NONLINEARITIES:
            raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")
        self.nonlinearity = nonlinearity
        self.mode = RNN_NONLINEARITIES[nonlinearity]
        super().__init__(input_size, hidden_size, bias, device, dtype)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", nonlinearity={self.nonlinearity}" if self.nonlinearity != "tanh" else "")


class LSTMCell(CellBase):
    """LSTM cell; same signature as :class:`torch.nn.LSTMCell`."""

    mode = "LSTM"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype)


class GRUCell(CellBase):
    """GRU cell; same signature as :class:`torch.nn.GRUCell`."""

    mode = "GRU"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None, dtype: Any = None
    ) -> None:
        super().__init__(input_size, hidden_size, bias, device, dtype)
