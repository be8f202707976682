"""Reference RNN/LSTM/GRU: pure PyTorch, step by step, numerically equal to torch.nn; and the diagonal linear
recurrences LRU and minGRU, sequential and as a parallel scan (:mod:`gradprobe.reference.linear`).

The modules here share torch.nn's constructor signatures and ``state_dict``
keys; :func:`from_torch` copies a torch.nn module into its twin. Every cell
also exposes the analytic per-step Jacobian ``d state_t / d state_{t-1}``.
"""

from __future__ import annotations

from gradprobe.reference.cells import CellBase, GRUCell, LSTMCell, RNNCell
from gradprobe.reference.convert import from_torch
from gradprobe.reference.functional import LayerWeights
from gradprobe.reference.layers import GRU, LSTM, RNN, RecurrentBase, StackTrace
from gradprobe.reference.linear import LRU, MinGRU

__all__ = [
    "GRU",
    "LRU",
    "LSTM",
    "RNN",
    "CellBase",
    "GRUCell",
    "LSTMCell",
    "LayerWeights",
    "MinGRU",
    "RNNCell",
    "RecurrentBase",
    "StackTrace",
    "from_torch",
]
