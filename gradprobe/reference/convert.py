"""Conversion from torch.nn recurrent modules to the reference modules."""

from __future__ import annotations

import copy

from torch import nn

from gradprobe.reference.cells import CellBase, GRUCell, LSTMCell, RNNCell
from gradprobe.reference.layers import GRU, LSTM, RNN, RecurrentBase


def from_torch(module: nn.Module) -> RecurrentBase | CellBase:
    """Build the reference twin of a torch.nn RNN/LSTM/GRU (or cell) with copied weights.

    The copy lives on the same device and dtype and has the same training
    mode; later changes to either module do not affect the other.

    A reference module is copied as it is.

    Raises:
        TypeError: ``module`` is not a torch.nn recurrent layer or cell.
    """
    if isinstance(module, (RecurrentBase, CellBase)):
        return copy.deepcopy(module)
    param = next(module.parameters(), None)
    factory = {"device": param.device, "dtype": param.dtype} if param is not None else {}
    twin: nn.Module
    if isinstance(module, nn.RNNBase):
        config = {
            "num_layers": module.num_layers,
            "bias": module.bias,
            "batch_first": module.batch_first,
            "dropout": module.dropout,
            "bidirectional": module.bidirectional,
        }
        if isinstance(module, nn.LSTM):
            twin = LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **config, **factory)
        elif isinstance(module, nn.GRU):
            twin = GRU(module.input_size, module.hidden_size, **config, **factory)
        elif isinstance(module, nn.RNN):
            twin = RNN(module.input_size, module.hidden_size, nonlinearity=module.nonlinearity, **config, **factory)
        else:
            raise TypeError(f"unsupported recurrent module {type(module).__name__}")
    elif isinstance(module, nn.LSTMCell):
        twin = LSTMCell(module.input_size, module.hidden_size, bias=module.bias, **factory)
    elif isinstance(module, nn.GRUCell):
        twin = GRUCell(module.input_size, module.hidden_size, bias=module.bias, **factory)
    elif isinstance(module, nn.RNNCell):
        twin = RNNCell(
            module.input_size, module.hidden_size, bias=module.bias, nonlinearity=module.nonlinearity, **factory
        )
    else:
        raise TypeError(f"from_torch expects a torch.nn RNN/LSTM/GRU or cell, got {type(module).__name__}")
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin
