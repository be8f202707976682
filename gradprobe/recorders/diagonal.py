"""How far gradients travel through a diagonal linear recurrence ``h_t = a_t * h_(t-1) + b_t``.

The per-step Jacobian ``d h_t / d h_(t-1)`` is ``diag(a_t)``, so everything is
exact from the decays ``|a_t|`` alone (LRU, minGRU/minLSTM, RG-LRU, Mamba's
``exp(delta_t A)``, mLSTM's forget gate), with no replay and no power
iteration:

- ``||d h_T / d h_(T-k)||`` (spectral norm of a diagonal: its largest entry) is
  the largest over channels of ``prod_(s=T-k+1..T) |a_s|`` (:func:`profile`);
- a channel's memory time constant ``tau = -1 / ln|a|`` is the number of steps
  over which its signal falls by ``e`` (for input-dependent decays, the
  geometric mean over steps; :func:`time_constants`);
- the layer's horizon is where the profile falls below ``1/e``, interpolated
  in log space (:func:`horizon`): for a constant ``|a| = r`` it is ``-1/ln r``
  exactly. The classic probe's horizon at ``epsilon`` is ``ln(1/epsilon)``
  times this.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def log_decays(transition: Tensor) -> Tensor:
    """``ln|a_t|`` in float64 (``[..., T, N]``; ``-inf`` where ``a_t = 0``)."""
    return torch.log(transition.detach().abs().to(torch.float64))


def profile(transition: Tensor, row: int | None = None) -> list[float]:
    """``||d h_T / d h_(T-k)||`` for ``k = 0..T-1``, the largest over channels (and over rows of the batch, or
    of one ``row``), from the transitions ``a_t`` (``[B, T, N]``)."""
    logs = log_decays(transition)
    return profile_of_logs(logs[row : row + 1] if row is not None else logs)


def profile_of_logs(logs: Tensor) -> list[float]:
    """:func:`profile` from ``ln|a_t|`` (``[B, T, N]``, float64), for a caller that has them already."""
    steps = logs.shape[-2]
    reverse = torch.flip(logs, dims=[-2])  # step T first
    cumulative = torch.cumsum(reverse, dim=-2)[..., : steps - 1, :]  # k = 1..T-1
    zeros = torch.zeros_like(cumulative[..., :1, :])
    per_channel = torch.cat([zeros, cumulative], dim=-2)  # k = 0..T-1
    largest = per_channel.amax(dim=-1)  # over channels
    while largest.dim() > 1:
        largest = largest.amax(dim=0)  # over rows
    values: list[float] = torch.exp(largest).tolist()
    return values


def time_constants(transition: Tensor) -> Tensor:
    """Per channel, ``tau = -1 / mean_t ln|a_t|`` (``inf`` for a channel that does not decay), float64 ``[N]``,
    averaged over the rows and steps of ``[B, T, N]`` transitions."""
    mean = log_decays(transition).reshape(-1, transition.shape[-1]).mean(dim=0)
    return torch.where(mean < 0, -1 / mean, torch.full_like(mean, math.inf))


def horizon(values: Sequence[float]) -> float:
    """Where ``values`` (a profile, ``values[0]`` the start) falls below ``values[0] / e``, interpolated linearly
    in log space; beyond the sequence, extrapolated at the mean rate of decay (``inf``: no decay)."""
    if not values or not values[0] > 0:
        return 0.0
    logs = [math.log(v / values[0]) if v > 0 else -math.inf for v in values]
    for k in range(1, len(logs)):
        if logs[k] <= -1.0:
            before, after = logs[k - 1], logs[k]
            if math.isinf(after):
                return float(k)
            return (k - 1) + (-1.0 - before) / (after - before)
    last = len(logs) - 1
    rate = logs[last] / last if last else 0.0
    return -1.0 / rate if rate < 0 else math.inf
