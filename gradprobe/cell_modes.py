"""The cell modes gradprobe knows and their gates: plain data, importable without torch (the report reads it)."""

from __future__ import annotations

MODES = ("RNN_TANH", "RNN_RELU", "RNN_LEAKY_RELU", "LSTM", "GRU")
GATE_COUNT = {"RNN_TANH": 1, "RNN_RELU": 1, "RNN_LEAKY_RELU": 1, "LSTM": 4, "GRU": 3}
#: Slope of the leaky ReLU for negative pre-activations (``RNN_LEAKY_RELU``; torch's LeakyReLU default).
LEAKY_SLOPE = 0.01
#: The Elman RNN's ``nonlinearity`` argument and the mode it selects (``leaky_relu``: gradprobe's modules only).
RNN_NONLINEARITIES = {"tanh": "RNN_TANH", "relu": "RNN_RELU", "leaky_relu": "RNN_LEAKY_RELU"}
GATE_NAMES = {
    "RNN_TANH": ("",),
    "RNN_RELU": ("",),
    "RNN_LEAKY_RELU": ("",),
    "LSTM": ("input", "forget", "cell", "output"),
    "GRU": ("reset", "update", "new"),
}
#: Where a gate counts as saturated: a sigmoid gate below/above these, a tanh output beyond +-TANH_LIMIT.
SIGMOID_LOW, SIGMOID_HIGH = 0.05, 0.95
TANH_LIMIT = 0.95
#: Gate activations that are tanh outputs (the others are sigmoids).
TANH_GATES = frozenset({"cell", "cell_state", "new", "tanh", "output_state"})


def is_relu(mode: str | None) -> bool:
    """Whether ``mode`` is an Elman RNN with a ReLU (plain or leaky)."""
    return mode in ("RNN_RELU", "RNN_LEAKY_RELU")
