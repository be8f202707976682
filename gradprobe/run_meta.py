"""The run's ``meta`` event: versions, the process, the layers with their weight scales, settings, configuration."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gradprobe import distributed
from gradprobe.discovery import RecurrentSite
from gradprobe.layer_weights import describe_with_scales
from gradprobe.version import __version__


def meta_fields(
    model: nn.Module, sites: list[RecurrentSite], settings: Any, rules: Any, optimizer: torch.optim.Optimizer | None
) -> dict[str, Any]:
    """The fields of the ``meta`` event (the first line of a run log)."""
    rank, world_size = distributed.rank_and_world()
    config = getattr(rules, "config", None)
    return {
        "rank": rank,
        "world_size": world_size,
        "gradprobe": __version__,
        "torch": torch.__version__,
        "model": type(model).__name__,
        "layers": [describe_with_scales(site) for site in sites],
        "settings": vars(settings).copy(),
        # so that ``gradprobe report`` judges the log as it was judged live
        "config": config.to_dict() if config is not None and hasattr(config, "to_dict") else None,
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
    }
