"""Residual connections across the layers of a stacked recurrent module."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence


class ResidualRecurrentStack(nn.Module):
    """Single-layer recurrent modules run in turn, each layer's input added to its output.

    Same call contract as the multi-layer module it replaces (``output, h_n``
    or ``output, (h_n, c_n)``), including PackedSequence input. The skip is
    applied wherever input and output widths match (every layer but the
    first when input_size differs). Deep stacks then pass gradients to lower
    layers through the identity paths, not only through each layer's Jacobian.
    """

    def __init__(self, layers: list[nn.RNNBase], dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dropout = dropout
        first = layers[0]
        self.batch_first = first.batch_first
        self.mode = first.mode
        self.num_layers = len(layers)
        self.bidirectional = first.bidirectional
        self.hidden_size = first.hidden_size
        self.input_size = first.input_size

    def forward(self, input: Tensor | PackedSequence, hx: Any = None) -> tuple[Any, Any]:
        directions = 2 if self.bidirectional else 1
        finals: list[tuple[Tensor, ...]] = []
        x = input
        for index, layer in enumerate(self.layers):
            part = None
            if hx is not None:
                rows = slice(index * directions, (index + 1) * directions)
                part = tuple(h[rows] for h in hx) if isinstance(hx, tuple) else hx[rows]
            if index and self.dropout and self.training:
                x = _map_data(x, lambda d: F.dropout(d, self.dropout, True))
            out, hidden = layer(x, part)
            if _width(out) == _width(x):
                out = _combine(out, x)
            finals.append(hidden if isinstance(hidden, tuple) else (hidden,))
            x = out
        stacked = tuple(torch.cat([f[k] for f in finals], dim=0) for k in range(len(finals[0])))
        return x, (stacked if self.mode == "LSTM" else stacked[0])


def _width(x: Tensor | PackedSequence) -> int:
    return (x.data if isinstance(x, PackedSequence) else x).shape[-1]


def _map_data(x: Any, fn: Any) -> Any:
    if isinstance(x, PackedSequence):
        return PackedSequence(fn(x.data), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    return fn(x)


def _combine(out: Any, skip: Any) -> Any:
    if isinstance(out, PackedSequence):
        return PackedSequence(out.data + skip.data, out.batch_sizes, out.sorted_indices, out.unsorted_indices)
    return out + skip


def residual_stack(module: nn.RNNBase) -> ResidualRecurrentStack:
    """Split a fused multi-layer torch.nn RNN/LSTM/GRU into a :class:`ResidualRecurrentStack`.

    Weights are copied, so the new module computes exactly what the old one
    did plus the skip connections. Re-create the optimizer afterwards: the
    parameters are new objects.
    """
    if not isinstance(module, nn.RNNBase):
        raise TypeError(f"residual_stack expects a torch.nn RNN/LSTM/GRU, got {type(module).__name__}")
    param = next(module.parameters())
    directions = 2 if module.bidirectional else 1
    out_size = (module.proj_size or module.hidden_size) * directions
    layers = []
    for index in range(module.num_layers):
        kwargs: dict[str, Any] = {
            "bias": module.bias,
            "batch_first": module.batch_first,
            "bidirectional": module.bidirectional,
            "device": param.device,
            "dtype": param.dtype,
        }
        if isinstance(module, nn.LSTM):
            kwargs["proj_size"] = module.proj_size
        if type(module) is nn.RNN:
            kwargs["nonlinearity"] = module.nonlinearity
        layer_class: Any = type(module)  # an nn.RNN/LSTM/GRU subclass, built from sizes
        layer = layer_class(module.input_size if index == 0 else out_size, module.hidden_size, **kwargs)
        state = {}
        for name in layer.state_dict():
            source = name.replace("_l0", f"_l{index}")
            state[name] = getattr(module, source).detach().clone()
        layer.load_state_dict(state)
        layers.append(layer)
    stack = ResidualRecurrentStack(layers, module.dropout)
    stack.train(module.training)
    return stack
