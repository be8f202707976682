"""The recurrent weights of each layer direction, for the static (GP2xx) rules."""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
from torch import Tensor

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


def each_direction(sites: list[RecurrentSite], modes: Collection[str] | None = None) -> Iterator[tuple[RecurrentSite, str, dict[str, Tensor]]]:
    """``(site, track, params)`` for every layer direction of the sites of a known cell math (or of ``modes``), without autograd."""
    for site in sites:
        if site.mode is None or (modes is not None and site.mode not in modes):
            continue
        for track, params in directions(site):
            with torch.no_grad():
                yield site, track, params
