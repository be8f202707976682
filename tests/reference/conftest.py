from __future__ import annotations

from typing import Any

from torch import nn

KINDS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (nn.LSTM, {}),
    "lstm_proj": (nn.LSTM, {"proj_size": 3}),
    "gru": (nn.GRU, {}),
}
