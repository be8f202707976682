"""Share of gate activations sitting in their flat (saturated) regions."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradprobe.cell_modes import SIGMOID_HIGH, SIGMOID_LOW, TANH_GATES, TANH_LIMIT


def saturation_fractions(gates: dict[str, Tensor]) -> dict[str, Any]:
    """Summarize gate activations of many (step, row) samples.

    Sigmoid gates count as saturated outside ``[0.05, 0.95]`` (slope below
    ~0.048, a fifth of the peak 0.25); tanh outputs beyond ``|y| > 0.95``
    (slope below ~0.1). For ReLU, the fraction is the share of zero outputs.

    Args:
        gates: Output of :func:`gradprobe.reference.functional.gate_activations`,
            each ``[N, H]``.

    Returns:
        ``{"fractions": {gate: share saturated}, "low": {sigmoid gate: share
        below 0.05}, "dead_units": units zero on every sample (ReLU) or None}``.
    """
    parts: list[Tensor] = []
    layout: list[tuple[str, str]] = []
    for name, value in gates.items():
        if name == "relu_pre":
            off = value <= 0
            parts += [off.float().mean(), off.all(dim=0).sum().float()]
            layout += [("fractions", "relu"), ("dead", "")]
        elif name == "leaky_relu_pre":  # the share on the leaky side; a leaky unit never dies
            parts.append((value <= 0).float().mean())
            layout.append(("fractions", "leaky_relu"))
        elif name in TANH_GATES:
            parts.append((value.abs() > TANH_LIMIT).float().mean())
            layout.append(("fractions", name))
        else:
            low = value < SIGMOID_LOW
            parts += [(low | (value > SIGMOID_HIGH)).float().mean(), low.float().mean()]
            layout += [("fractions", name), ("low", name)]
    result: dict[str, Any] = {"fractions": {}, "low": {}, "dead_units": None}
    for (kind, name), value in zip(layout, torch.stack(parts).tolist()):
        if kind == "dead":
            result["dead_units"] = int(value)
        else:
            result[kind][name] = value
    return result


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


def output_gates(hidden: list[Tensor]) -> dict[str, Tensor] | None:
    """A custom cell's saturation, read from its hidden outputs ``h_t``: ``{"output_state": [N, H]}``.

    Only for a bounded state (every ``|h| <= 1``, as behind ``tanh`` or
    ``o * tanh(c)``), where ``|h| > 0.95`` means a flat activation; ``None`` for
    an unbounded state, whose scale says nothing about saturation.
    """
    if not hidden:
        return None
    h = torch.cat([t.detach().reshape(-1, t.shape[-1]) for t in hidden]).float()
    if h.numel() == 0 or not bool(h.abs().max() <= 1 + 1e-6):
        return None
    return {"output_state": h}
