"""The weights of each recurrent layer direction as the layer computes with them, and their scales.

Used by the static rules (GP2xx) and recorded in the run log's ``meta``
event (:func:`weight_scales`), so that a rule judging a log can tell which
weights drive a layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from gradprobe.discovery import RecurrentSite, gate_count
from gradprobe.reference.functional import GATE_NAMES, is_relu


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


#: Power iterations of the spectral-norm estimate in :func:`weight_scales` (a few percent low at most for a
#: matrix whose top singular values are not nearly equal; exact enough to say which weights drive a layer).
POWER_STEPS = 30


def weight_scales(site: RecurrentSite) -> dict[str, dict[str, Any]]:
    """Per track: ``recurrent``, sigma_max of the recurrent weight (its candidate block for LSTM/GRU);
    ``input``, the largest gate block's input-weight std over Xavier's (He's for ReLU); ``bias``, the mean
    of ``b_ih + b_hh`` per gate (named as in the saturation events). ``None`` where unreadable."""
    scales: dict[str, dict[str, Any]] = {}
    if site.mode is None:
        return scales
    for track, params in directions(site):
        with torch.no_grad():
            scales[track] = {
                "recurrent": _spectral_norm(candidate_block(site.mode, params["weight_hh"])) if "weight_hh" in params else None,
                "input": _input_ratio(site.mode, params["weight_ih"]) if "weight_ih" in params else None,
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


def _spectral_norm(weight: Tensor) -> float:
    w = weight.detach().double()
    v = torch.ones(w.shape[1], dtype=w.dtype, device=w.device) / math.sqrt(w.shape[1])
    sigma = 0.0
    for _ in range(POWER_STEPS):
        u = w @ v
        sigma = float(torch.linalg.vector_norm(u))
        if sigma == 0.0:
            return 0.0
        v = w.T @ (u / sigma)
        v = v / torch.linalg.vector_norm(v)
    return sigma


def _input_ratio(mode: str, weight: Tensor) -> float:
    w = weight.detach().double()
    count = gate_count(mode)
    fan_out, fan_in = w.shape[0] // count, w.shape[1]
    reference = math.sqrt(2.0 / fan_in) if is_relu(mode) else math.sqrt(2.0 / (fan_in + fan_out))
    return max(float(block.std()) for block in w.chunk(count, dim=0)) / reference


def describe_with_scales(site: RecurrentSite) -> dict[str, Any]:
    """:meth:`RecurrentSite.describe` plus ``scales`` (:func:`weight_scales`) for the ``meta`` event."""
    info = site.describe()
    try:
        info["scales"] = weight_scales(site)
    except Exception:  # noqa: BLE001 - a weight that cannot be read is no reason not to probe
        info["scales"] = {}
    return info
