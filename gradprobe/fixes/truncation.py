"""Truncated back-propagation through time, with the length taken from the measured horizon."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor

from gradprobe.actions import truncation_length


def length_from_profiles(layers: Iterable[Any], seq_len: int | None = None, factor: float = 2.0) -> int:
    """:func:`truncation_length` for the longest horizon among deep-probe profiles (``probe.layers.values()``)."""
    layers = list(layers)
    if not layers:
        raise ValueError("no deep-probe profiles to choose a truncation length from")
    length = seq_len or max(layer.seq_len for layer in layers)
    horizons = [layer.horizon for layer in layers]
    longest = None if any(h is None for h in horizons) else max(horizons)
    return truncation_length(longest, length, factor)


def detach_state(state: Any) -> Any:
    """Cut the autograd history of a recurrent state (tensor or nested tuple) between windows."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


class TruncatedBPTT:
    """Split sequences into windows of ``length`` steps for truncated BPTT.

    Example::

        tbptt = TruncatedBPTT(truncation_length(layer.horizon, T))
        state = None
        for x_win, y_win in tbptt.windows(x, y):
            out, state = model(x_win, state)
            loss = crit(out, y_win); loss.backward(); opt.step(); opt.zero_grad()
            state = tbptt.detach(state)
    """

    def __init__(self, length: int, time_dim: int = 0) -> None:
        if length < 1:
            raise ValueError("length must be >= 1")
        self.length = int(length)
        self.time_dim = time_dim

    def windows(self, *sequences: Tensor) -> Iterator[tuple[Tensor, ...]]:
        """Yield aligned windows of every sequence along ``time_dim``."""
        steps = sequences[0].shape[self.time_dim]
        for start in range(0, steps, self.length):
            yield tuple(s.narrow(self.time_dim, start, min(self.length, steps - start)) for s in sequences)

    detach = staticmethod(detach_state)
