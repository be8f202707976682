"""The recurrent weights of each layer direction, for the static (GP2xx) rules."""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
from torch import Tensor

from gradprobe.discovery import RecurrentSite
from gradprobe.layer_weights import directions


def each_direction(
    sites: list[RecurrentSite], modes: Collection[str] | None = None
) -> Iterator[tuple[RecurrentSite, str, dict[str, Tensor]]]:
    """``(site, track, params)`` for every layer direction of the sites of a known cell math (or of ``modes``), without autograd."""
    for site in sites:
        if site.mode is None or (modes is not None and site.mode not in modes):
            continue
        for track, params in directions(site):
            with torch.no_grad():
                yield site, track, params
