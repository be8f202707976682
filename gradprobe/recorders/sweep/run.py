"""One layer direction after the sweep's forward pass, and what its backward sweep measured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from gradprobe.reference.functional import LayerWeights

#: Floating types the sweep runs in; others (half precision weights) take the general replay.
SWEEP_DTYPES = frozenset({torch.float32, torch.float64})
#: Time steps whose activations are expanded at once in the backward sweep (bounds its temporaries).
CHUNK_STEPS = 64
#: Below this many elements torch's tanh is cheaper than ``2 sigmoid(2x) - 1``.
TANH_DIRECT_BELOW = 4096


def tanh_by_sigmoid(x: Tensor) -> bool:
    """Whether ``tanh(x)`` is cheaper as ``2 sigmoid(2x) - 1`` (large single-precision tensors: torch's CPU
    sigmoid is ~3x faster than its tanh)."""
    return x.dtype == torch.float32 and x.numel() >= TANH_DIRECT_BELOW


def tanh_into(x: Tensor, out: Tensor) -> Tensor:
    """``tanh(x)`` into ``out``, through the sigmoid where that is cheaper (:func:`tanh_by_sigmoid`)."""
    if not tanh_by_sigmoid(x):
        return torch.tanh(x, out=out)
    return torch.sigmoid(x * 2, out=out).mul_(2).sub_(1)


def carry(states: tuple[Tensor, ...], sizes: list[int] | None, t: int) -> None:
    """Rows past ``sizes[t]`` (ended, or in a reverse direction not yet started) keep the state of step ``t``."""
    if sizes is not None and sizes[t] < states[0].shape[0]:
        states[t + 1][sizes[t] :] = states[t][sizes[t] :]


class GateReader(Protocol):
    """How a cell's activations are named (:class:`gradprobe.recorders.sweep.cells.CellSweep`)."""

    def gates(self, run: DirectionRun) -> dict[str, Tensor] | None:
        """The gate activations of every row and step, ``[T, B, *]`` in processing order; ``None`` for ReLU."""
        ...

    def head_extras(self, run: DirectionRun, rows: int) -> dict[str, Tensor]:
        """What the linearization of the first ``rows`` rows needs beyond the gates, in processing order."""
        ...


@dataclass
class DirectionRun:
    """One layer direction after the forward pass, in its processing order of time.

    Per-step tensors are ``[T, B, *]`` (states ``[T + 1, B, *]``: index 0 is the
    initial state, ``t + 1`` the state after step ``t``).

    Attributes:
        name: Track name (``module.l{k}`` or ``module.l{k}_reverse``).
        mode: Cell math.
        cell: The cell's sweep (names its gates).
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
    cell: GateReader
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
        """Time steps of the direction."""
        return self.h.shape[0] - 1

    def chronological(self, t: Tensor) -> Tensor:
        """A per-step tensor in processing order, put in order of time."""
        return t.flip(0) if self.reverse else t

    def outputs(self) -> Tensor:
        """``h_t`` of every step, ``[T, B, P]``, chronological."""
        return self.chronological(self.h[1:])

    def head_gates(self, rows: int) -> dict[str, Tensor] | None:
        """The gate activations of the first ``rows`` batch rows, ``[T, rows, *]``, chronological, named as
        :attr:`fn.Linearization.gates` names them (GRU adds ``hh_new``); ``None`` for ReLU modes."""
        gates = self.cell.gates(self)
        if gates is None:
            return None
        head = {name: value[:, :rows] for name, value in gates.items()}
        head.update(self.cell.head_extras(self, rows))
        return {name: self.chronological(value) for name, value in head.items()}

    def saturation_gates(self) -> dict[str, Tensor]:
        """The gate activations of every row alive at every step, ``[N, *]`` each, named as
        :func:`gradprobe.recorders.saturation.saturation_fractions` reads them.

        ReLU modes have the outputs in place of the pre-activations: they are
        zero (ReLU) or negative (leaky ReLU) exactly where the pre-activation
        is at most zero, all that the saturation of a ReLU counts.
        """
        h = self.h[1:]
        gates = self.cell.gates(self) or {"leaky_relu_pre" if self.mode == "RNN_LEAKY_RELU" else "relu_pre": h}
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
