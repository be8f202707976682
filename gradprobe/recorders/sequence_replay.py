"""Sequence-level measuring: any module whose one call maps a whole sequence to a sequence.

A layer-norm LSTM that loops over time inside its own ``forward`` (the shape
of torchaudio's RNN-T predictor ``_CustomLSTM``), a scan, a state-space
mixer: gradprobe cannot read their state, but it can measure what reaches
their inputs. On a deep step the call is replayed through autograd with the
captured inputs and two figures come out:

- ``||dL/dy_t||`` per output step, from the gradient captured on the output;
- the propagation profile in the *input* space, ``||v^T dy_T / dx_(T-k)||``
  for a random unit ``v`` on the last output step, normalized at ``k = 0``.
  For ``h_t = A h_(t-1) + U x_t, y_t = h_t`` it is ``||v^T A^k U||``: the same
  decay as the state profile, with no knowledge of the state.

Which dimension is time is read from causality, not guessed from names: the
last step along the time dimension depends on the step before it, while the
last row along the batch dimension depends on no other row. A module with a
``batch_first`` attribute is taken at its word.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

#: Relative size under which an input gradient counts as zero in the causality test.
CAUSAL_TOLERANCE = 1e-12


def is_sequence_call(x: Any, output: Any) -> bool:
    """Whether one call of a named cell maps a whole sequence: a 3-D input and a first output with the same two
    leading dimensions (time and batch, in either order); a cell's input has no time dimension."""
    return (
        isinstance(x, Tensor)
        and isinstance(output, Tensor)
        and x.dim() == 3
        and output.dim() == 3
        and tuple(x.shape[:2]) == tuple(output.shape[:2])
        and x.is_floating_point()
    )


def detached(value: Any) -> Any:
    """``value`` with every tensor detached, through tuples, lists and dicts."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(detached(v) for v in value)
    if isinstance(value, dict):
        return {k: detached(v) for k, v in value.items()}
    return value


@dataclass
class SequenceCall:
    """The latest sequence-level call of a site on a deep step: its arguments (detached) and its output's gradient."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output_grad: Tensor | None = None


@dataclass
class SequenceMeasurement:
    """What the replay of one sequence-level call measured.

    Attributes:
        time_dim: 0 (time-major) or 1 (batch-first).
        grad_norms: ``||dL/dy_t||`` per output step (``None`` when no gradient reached the output).
        profile: ``||v^T dy_T / dx_(T-k)||`` for ``k = 0..T-1``, relative to ``k = 0``.
        batch: Batch rows of the call.
    """

    time_dim: int
    grad_norms: list[float] | None
    profile: list[float]
    batch: int


def _first_tensor(output: Any) -> Tensor:
    while isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(f"the call returned {type(output).__name__}, not a sequence tensor")
    return output


def _input_gradient(y: Tensor, x: Tensor, time_dim: int, generator: torch.Generator, rows: int) -> Tensor:
    """``v^T dy_last / dx`` for a random unit ``v`` on the last step along ``time_dim`` of the first ``rows`` rows."""
    last = y.select(time_dim, y.shape[time_dim] - 1)  # [B, H]
    v = torch.zeros(last.shape, dtype=torch.float64)
    v[:rows] = torch.randn((min(rows, last.shape[0]), *last.shape[1:]), generator=generator, dtype=torch.float64)
    v = v / torch.linalg.vector_norm(v).clamp_min(1e-300)
    (grad,) = torch.autograd.grad(last, x, grad_outputs=v.to(dtype=last.dtype, device=last.device), retain_graph=True)
    return grad


def _depends_on_previous(grad: Tensor, time_dim: int) -> bool:
    """Whether the last step's output depends on the step before it along ``time_dim``."""
    if grad.shape[time_dim] < 2:
        return False
    previous = float(torch.linalg.vector_norm(grad.select(time_dim, grad.shape[time_dim] - 2).double()))
    scale = float(torch.linalg.vector_norm(grad.double()))
    return scale > 0 and previous > CAUSAL_TOLERANCE * scale


def measure_sequence(
    module: nn.Module,
    call: SequenceCall,
    generator: torch.Generator,
    paused: Callable[[], AbstractContextManager[None]],
    rows: int = 4,
) -> SequenceMeasurement:
    """Replay ``call`` through autograd and measure the gradient norms and the input-space profile.

    The replay runs with the capture hooks paused and the random state
    forked (dropout inside the module draws other masks than the training
    forward did, and the training's random stream is left as it was).
    """
    x = call.args[0].detach().requires_grad_(True)
    devices = [x.device] if x.device.type == "cuda" else []
    with paused(), torch.random.fork_rng(devices=devices), torch.enable_grad():
        y = _first_tensor(module(x, *call.args[1:], **call.kwargs))
        declared = getattr(module, "batch_first", None)
        if isinstance(declared, bool):
            time_dim = int(declared)
            grad = _input_gradient(y, x, time_dim, generator, rows)
        else:
            grad = _input_gradient(y, x, 0, generator, rows)
            time_dim = 0
            if not _depends_on_previous(grad, 0):
                time_dim = 1
                grad = _input_gradient(y, x, 1, generator, rows)
    steps = int(x.shape[time_dim])
    per_step = torch.linalg.vector_norm(grad.detach().double().movedim(time_dim, 0).reshape(steps, -1), dim=1)
    backwards = per_step.flip(0).tolist()  # k = 0 is the last step
    top = backwards[0] if backwards[0] > 0 else max(backwards, default=0.0)
    profile = [v / top for v in backwards] if top > 0 else [0.0] * steps
    return SequenceMeasurement(time_dim, step_norms(call.output_grad, time_dim), profile, int(x.shape[1 - time_dim]))


def step_norms(output_grad: Tensor | None, time_dim: int) -> list[float] | None:
    """``||dL/dy_t||`` per step of a sequence's output gradient (``None`` without a 3-D one), in float64."""
    if output_grad is None or output_grad.dim() != 3:
        return None
    g = output_grad.detach().double().movedim(time_dim, 0)
    norms: list[float] = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1).tolist()
    return norms
