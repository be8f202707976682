"""Diagonal linear recurrences in pure PyTorch: an LRU and a minGRU, each sequential and as a parallel scan.

Both compute ``h_t = a_t * h_(t-1) + b_t`` channel by channel (a diagonal
transition): the LRU (Orvieto et al. 2023) with a constant complex ``a_t =
lambda`` on a ring of radius ``[r_min, r_max]``, the minGRU (Feng et al. 2024)
with ``a_t = 1 - z_t``, its input-dependent update gate. Since the per-step
Jacobian ``d h_t / d h_(t-1)`` is ``diag(a_t)``, :meth:`transition` is all the
probe needs to know how far a gradient travels (see
:mod:`gradprobe.recorders.diagonal`). The sequential and scan forms agree to
round-off (tested), so either backs a test.

Inputs are batch-first, ``[B, T, H_in]``, as in both papers' code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

Scan = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def scan_sequential(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """``h_t = a_t * h_(t-1) + b_t`` step by step over dim 1 (``[B, T, N]``); every ``h_t``, ``[B, T, N]``."""
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def scan_parallel(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """The same recurrence as :func:`scan_sequential` by a log-depth (Hillis-Steele) scan of the associative
    pairs ``(a, b)``: ``(a1, b1) then (a2, b2) = (a1 * a2, a2 * b1 + b2)``."""
    a = a.expand_as(b)
    if h0 is not None:
        b = torch.cat([(a[:, :1] * h0.unsqueeze(1) + b[:, :1]), b[:, 1:]], dim=1)
    offset = 1
    steps = b.shape[1]
    while offset < steps:
        a_prev = torch.cat([torch.ones_like(a[:, :offset]), a[:, :-offset]], dim=1)
        b_prev = torch.cat([torch.zeros_like(b[:, :offset]), b[:, :-offset]], dim=1)
        b = a * b_prev + b
        a = a * a_prev
        offset *= 2
    return b


class LRU(nn.Module):
    """Linear Recurrent Unit: ``h_t = lambda * h_(t-1) + gamma * (B x_t)``, ``y_t = Re(C h_t) + D x_t``.

    ``lambda = exp(-exp(nu_log) + i exp(theta_log))`` (the exponential parameterization keeps ``|lambda| < 1``),
    ``gamma = exp(gamma_log)``, initialized to ``sqrt(1 - |lambda|^2)`` (the input normalization). Initialized
    uniformly on the ring ``r_min <= |lambda| <= r_max``, phases in ``[0, max_phase]``.

    Args:
        input_size: Features of ``x_t``.
        state_size: Complex channels ``N`` of ``h_t``.
        output_size: Features of ``y_t`` (default ``input_size``).
        r_min, r_max: The ring's radii.
        max_phase: Largest phase of ``lambda``.
    """

    def __init__(
        self,
        input_size: int,
        state_size: int,
        output_size: int | None = None,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        output_size = input_size if output_size is None else output_size
        u1, u2 = torch.rand(state_size), torch.rand(state_size)
        nu = -0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2)
        self.nu_log = nn.Parameter(torch.log(nu))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2 + 1e-12))
        magnitude = torch.exp(-nu)
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - magnitude**2)))
        scale = 1 / math.sqrt(2 * input_size)
        self.B_re = nn.Parameter(torch.randn(state_size, input_size) * scale)
        self.B_im = nn.Parameter(torch.randn(state_size, input_size) * scale)
        self.C_re = nn.Parameter(torch.randn(output_size, state_size) / math.sqrt(state_size))
        self.C_im = nn.Parameter(torch.randn(output_size, state_size) / math.sqrt(state_size))
        self.D = nn.Parameter(torch.randn(output_size, input_size) / math.sqrt(input_size))

    def eigenvalues(self) -> Tensor:
        """``lambda`` per channel (complex)."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def set_ring(self, radius: float | Tensor, phase: float | Tensor = 0.0) -> None:
        """Put every eigenvalue at ``radius`` (and ``phase``), the input normalization to match."""
        with torch.no_grad():
            radius = torch.as_tensor(radius, dtype=self.nu_log.dtype).expand_as(self.nu_log)
            phase = torch.as_tensor(phase, dtype=self.nu_log.dtype).expand_as(self.theta_log)
            self.nu_log.copy_(torch.log(-torch.log(radius)))
            self.theta_log.copy_(torch.log(phase + 1e-300))
            self.gamma_log.copy_(torch.log(torch.sqrt(1 - radius**2)))

    def transition(self, x: Tensor) -> Tensor:
        """``a_t`` for every step of ``x`` (``[B, T, N]``, complex): the diagonal of ``d h_t / d h_(t-1)``."""
        return self.eigenvalues().expand(x.shape[0], x.shape[1], -1)

    def inputs(self, x: Tensor) -> Tensor:
        """``b_t = gamma * (B x_t)`` (``[B, T, N]``, complex)."""
        bx = torch.complex(x @ self.B_re.T, x @ self.B_im.T)
        return torch.exp(self.gamma_log) * bx

    def states(self, x: Tensor, parallel: bool = True, h0: Tensor | None = None) -> Tensor:
        """Every ``h_t`` (``[B, T, N]``, complex)."""
        scan: Scan = scan_parallel if parallel else scan_sequential
        return scan(self.transition(x), self.inputs(x), h0)

    def forward(self, x: Tensor, parallel: bool = True) -> Tensor:
        h = self.states(x, parallel)
        return h.real @ self.C_re.T - h.imag @ self.C_im.T + x @ self.D.T


class MinGRU(nn.Module):
    """minGRU: ``z_t = sigmoid(W_z x_t)``, ``h~_t = W_h x_t``, ``h_t = (1 - z_t) * h_(t-1) + z_t * h~_t``.

    Args:
        input_size: Features of ``x_t``.
        hidden_size: Channels of ``h_t``.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.linear_z = nn.Linear(input_size, hidden_size)
        self.linear_h = nn.Linear(input_size, hidden_size)

    def transition(self, x: Tensor) -> Tensor:
        """``a_t = 1 - z_t`` (``[B, T, N]``): the diagonal of ``d h_t / d h_(t-1)``."""
        return 1 - torch.sigmoid(self.linear_z(x))

    def inputs(self, x: Tensor) -> Tensor:
        """``b_t = z_t * h~_t``."""
        update: Tensor = torch.sigmoid(self.linear_z(x)) * self.linear_h(x)
        return update

    def forward(self, x: Tensor, parallel: bool = True, h0: Tensor | None = None) -> Tensor:
        scan: Scan = scan_parallel if parallel else scan_sequential
        z = torch.sigmoid(self.linear_z(x))  # the gate once for both terms
        return scan(1 - z, z * self.linear_h(x), h0)
