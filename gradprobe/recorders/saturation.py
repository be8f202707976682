"""Share of gate activations sitting in their flat (saturated) regions."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

SIGMOID_LOW, SIGMOID_HIGH = 0.05, 0.95
TANH_LIMIT = 0.95


def saturation_fractions(gates: dict[str, Tensor]) -> tuple[dict[str, float], int | None]:
    """Summarize gate activations of many (step, row) samples.

    Sigmoid gates count as saturated outside ``[0.05, 0.95]`` (slope below
    ~0.048, a fifth of the peak 0.25); tanh outputs beyond ``|y| > 0.95``
    (slope below ~0.1). For ReLU, the fraction is the share of zero outputs and
    the second return value counts units that are zero on every sample (dead).

    Args:
        gates: Output of :func:`gradprobe.reference.functional.gate_activations`,
            each ``[N, H]``.

    Returns:
        ``(fractions per gate, dead_units or None)``.
    """
    fractions: dict[str, float] = {}
    dead: int | None = None
    parts: list[Tensor] = []
    for name, value in gates.items():
        if name == "relu_pre":
            off = value <= 0
            parts.append(off.float().mean())
            dead_tensor = off.all(dim=0).sum()
            parts.append(dead_tensor.float())
        elif name in ("cell", "cell_state", "new", "tanh"):
            parts.append((value.abs() > TANH_LIMIT).float().mean())
        else:
            parts.append(((value < SIGMOID_LOW) | (value > SIGMOID_HIGH)).float().mean())
    values = torch.stack(parts).tolist()
    cursor = 0
    for name in gates:
        if name == "relu_pre":
            fractions["relu"] = values[cursor]
            dead = int(values[cursor + 1])
            cursor += 2
        else:
            fractions[name] = values[cursor]
            cursor += 1
    return fractions, dead


def track_gates(track: Any, rows: int | None = None) -> dict[str, Tensor] | None:
    """Gate activations of every step of a replayed track (``None`` for custom cells).

    Args:
        track: A :class:`gradprobe.recorders.replay.Track`.
        rows: Use at most this many batch rows per step.
    """
    if track.mode is None or track.weights is None:
        return None
    from gradprobe.reference import functional as fn

    counts = [p[0].shape[0] if rows is None else min(rows, p[0].shape[0]) for p in track.previous]
    inputs = torch.cat([x[:n].detach() for x, n in zip(track.step_inputs, counts)])
    if not track.inputs_projected:
        inputs = fn.project_input(track.mode, inputs, track.weights)
    width = len(track.previous[0])
    previous = tuple(torch.cat([p[k][:n].detach() for p, n in zip(track.previous, counts)]) for k in range(width))
    with torch.no_grad():
        return fn.gate_activations(track.mode, inputs, previous, track.weights)
