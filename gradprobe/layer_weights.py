"""The weights of each recurrent layer direction as the layer computes with them, and their scales.

Used by the static rules (GP2xx) and recorded in the run log's ``meta``
event (:func:`weight_scales`), so that a rule judging a log can tell which
weights drive a layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradprobe.cell_modes import GATE_NAMES, is_relu
from gradprobe.discovery import RecurrentSite, gate_count


def directions(site: RecurrentSite) -> Iterator[tuple[str, dict[str, Tensor]]]:
    """``(track name, {"weight_ih"|"weight_hh"|"bias_ih"|"bias_hh": parameter})`` for every layer direction of a site."""
    module = site.module
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    if site.kind == "cell":
        yield site.name, _effective(module, site.name, kinds, "")
        return
    for index, track in enumerate(site.tracks):
        layer, direction = divmod(index, 2 if module.bidirectional else 1)
        yield track, _effective(module, track, kinds, f"_l{layer}" + ("_reverse" if direction else ""))


class WeightNotReadable(LookupError):
    """A layer's weight that neither its name nor a known re-parametrization gives."""


class _Weights(dict[str, Tensor]):
    """The weights of one layer direction; a missing one raises a plain :class:`WeightNotReadable`."""

    def __init__(self, track: str, found: dict[str, Tensor]) -> None:
        super().__init__(found)
        self.track = track

    def __missing__(self, kind: str) -> Tensor:
        raise WeightNotReadable(
            f"{self.track} has no readable {kind}: it is neither a parameter nor an attribute of the module, "
            f"nor a {kind}_raw (DropConnect) or parametrized weight"
        )


def _effective(module: object, track: str, kinds: tuple[str, ...], suffix: str) -> dict[str, Tensor]:
    """The weights as the layer uses them.

    ``getattr`` gives a parametrized weight (``torch.nn.utils.parametrize``:
    orthogonal, spectral or weight norm) already computed, and the attribute
    that the older hook-based ``weight_norm``/``spectral_norm`` write. A
    DropConnect wrapper (AWD-LSTM's ``WeightDrop``) deletes the weight and
    keeps ``<name>_raw``, whose dropped copy it sets before each call: the raw
    weight is that copy's expectation (inverted dropout), so it is read.
    """
    found: dict[str, Tensor] = {}
    for kind in kinds:
        value = getattr(module, kind + suffix, None)
        if not isinstance(value, Tensor):
            value = getattr(module, kind + suffix + "_raw", None)
        if isinstance(value, Tensor):
            found[kind] = value
    return _Weights(track, found)


def candidate_block(mode: str, weight_hh: Tensor) -> Tensor:
    """The block of W_hh feeding the candidate (LSTM g, GRU n), or all of it for plain RNNs."""
    if mode not in ("LSTM", "GRU"):
        return weight_hh
    return weight_hh.chunk(gate_count(mode), dim=0)[2]


def recurrent_gain(mode: str, weight_hh: Tensor) -> float:
    """sigma_max of the recurrent weight's candidate block (:func:`candidate_block`), in double precision."""
    return float(torch.linalg.matrix_norm(candidate_block(mode, weight_hh).detach().double(), ord=2))


@dataclass(frozen=True)
class InputScale:
    """The std of each gate block of an input weight, against the scheme's reference std (Xavier's; He's for ReLU)."""

    stds: tuple[float, ...]
    reference: float
    scheme: str


def xavier_std(fan_in: int, fan_out: int) -> float:
    """Standard deviation of Glorot initialization."""
    return math.sqrt(2.0 / (fan_in + fan_out))


def input_scale(mode: str, weight_ih: Tensor) -> InputScale:
    """:class:`InputScale` of ``weight_ih`` for a layer of cell type ``mode``."""
    weight = weight_ih.detach().double()
    count = gate_count(mode)
    fan_out, fan_in = weight.shape[0] // count, weight.shape[1]
    relu = is_relu(mode)
    reference = math.sqrt(2.0 / fan_in) if relu else xavier_std(fan_in, fan_out)  # He's std, or Glorot's
    stds = tuple(float(block.std()) for block in weight.chunk(count, dim=0))
    return InputScale(stds, reference, "He" if relu else "Xavier")


def weight_scales(site: RecurrentSite) -> dict[str, dict[str, Any]]:
    """Per track: ``recurrent``, sigma_max of the recurrent weight (its candidate block for LSTM/GRU);
    ``input``, the largest gate block's input-weight std over Xavier's (He's for ReLU); ``bias``, the mean
    of ``b_ih + b_hh`` per gate (named as in the saturation events). ``None`` where unreadable."""
    scales: dict[str, dict[str, Any]] = {}
    if site.mode is None:
        return scales
    for track, params in directions(site):
        with torch.no_grad():
            inputs = input_scale(site.mode, params["weight_ih"]) if "weight_ih" in params else None
            scales[track] = {
                "recurrent": recurrent_gain(site.mode, params["weight_hh"]) if "weight_hh" in params else None,
                "input": max(inputs.stds) / inputs.reference if inputs is not None else None,
                "bias": _gate_biases(site.mode, params),
            }
    return scales


def _gate_biases(mode: str, params: dict[str, Tensor]) -> dict[str, float]:
    parts = [params[k].detach().double() for k in ("bias_ih", "bias_hh") if k in params]
    if not parts:
        return {}
    total = torch.stack(parts).sum(0)
    names = GATE_NAMES.get(mode, ("",))
    if names == ("",):  # a plain RNN: one block, named as its saturation is
        names = ("relu" if is_relu(mode) else "tanh",)
    return {name: float(block.mean()) for name, block in zip(names, total.chunk(len(names)))}


def describe_with_scales(site: RecurrentSite) -> dict[str, Any]:
    """:meth:`RecurrentSite.describe` plus ``scales`` (:func:`weight_scales`) for the ``meta`` event."""
    info = site.describe()
    try:
        info["scales"] = weight_scales(site)
    except Exception:  # noqa: BLE001 - a weight that cannot be read is no reason not to probe
        info["scales"] = {}
    return info
