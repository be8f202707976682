"""The recurrent weights of each layer direction, for the static (GP2xx) rules."""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
from torch import Tensor

from gradprobe.discovery import RecurrentSite, gate_count


def directions(site: RecurrentSite) -> Iterator[tuple[str, dict[str, Tensor]]]:
    """``(track name, {"weight_ih"|"weight_hh"|"bias_ih"|"bias_hh": parameter})`` for every layer direction of a site."""
    module = site.module
    if site.kind == "cell":
        kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        yield site.name, {k: getattr(module, k) for k in kinds if getattr(module, k, None) is not None}
        return
    for index, track in enumerate(site.tracks):
        layer, direction = divmod(index, 2 if module.bidirectional else 1)
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        params = {}
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            value = getattr(module, kind + suffix, None)
            if value is not None:
                params[kind] = value
        yield track, params


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
