"""The adapters of gradprobe's own linear recurrences (:mod:`gradprobe.reference.linear`): an LRU and a minGRU."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from gradprobe.recurrence_adapter import RecurrenceAdapter
from gradprobe.reference.linear import LRU, MinGRU


def _own_transition(module: LRU | MinGRU, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """Both reference layers say their decays themselves (``transition(x)``, tested against their forward)."""
    return module.transition(args[0])


def _lru_decays(module: LRU) -> Tensor:
    return module.eigenvalues().detach().abs()


def _lru_gain(module: LRU) -> Tensor:
    return module.gamma_log.detach().exp()


def _mingru_decays(module: MinGRU) -> Tensor | None:
    bias = module.linear_z.bias
    return None if bias is None else 1 - bias.detach().sigmoid()


LRU_ADAPTER = RecurrenceAdapter(
    "lru",
    _own_transition,
    static_decays=_lru_decays,
    input_gain=_lru_gain,
    documented="eigenvalues on a ring r_min=0.9 .. r_max=0.999 with input normalization sqrt(1 - |lambda|^2)",
)
MINGRU_ADAPTER = RecurrenceAdapter(
    "mingru", _own_transition, static_decays=_mingru_decays, documented="update-gate bias 0 (decay 0.5)"
)


def built_in_adapter(module: nn.Module) -> RecurrenceAdapter | None:
    """The adapter of gradprobe's own linear recurrences (:mod:`gradprobe.reference.linear`), else ``None``."""
    if isinstance(module, LRU):
        return LRU_ADAPTER
    if isinstance(module, MinGRU):
        return MINGRU_ADAPTER
    return None
