"""Diagonal linear recurrences (LRU, minGRU): the scan forms agree, and the exact decay diagnostics match theory
and autograd."""

from __future__ import annotations

import math

import pytest
import torch

from gradprobe.recorders import diagonal
from gradprobe.reference.linear import LRU, MinGRU, scan_parallel, scan_sequential


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("steps", [1, 7, 64])
def test_the_parallel_scan_is_the_sequential_recurrence(complex_, steps):
    g = torch.Generator().manual_seed(steps)
    shape = (3, steps, 5)
    a, b = torch.rand(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    h0 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    if complex_:
        a = torch.polar(a, torch.rand(shape, generator=g, dtype=torch.float64) * 6)
        b, h0 = torch.complex(b, b.flip(-1)), torch.complex(h0, -h0)
    for start in (None, h0):
        assert torch.allclose(scan_parallel(a, b, start), scan_sequential(a, b, start), atol=1e-12, rtol=1e-12)


def test_lru_sequential_and_parallel_agree_and_start_on_their_ring():
    torch.manual_seed(0)
    lru = LRU(6, 16, r_min=0.4, r_max=0.9).double()
    radius = lru.eigenvalues().abs()
    assert bool((radius >= 0.4 - 1e-12).all() and (radius <= 0.9 + 1e-12).all())
    assert torch.allclose(torch.exp(lru.gamma_log), torch.sqrt(1 - radius**2))  # the input normalization
    x = torch.randn(2, 40, 6, dtype=torch.float64)
    assert torch.allclose(lru(x, parallel=True), lru(x, parallel=False), atol=1e-12)


@pytest.mark.parametrize("radius", [0.5, 0.9, 0.99])
def test_an_lru_on_a_ring_of_radius_r_has_profile_r_to_the_k_and_horizon_minus_one_over_ln_r(radius):
    torch.manual_seed(1)
    lru = LRU(4, 8).double()
    lru.set_ring(radius, phase=torch.rand(8, dtype=torch.float64) * 3)
    x = torch.randn(2, 50, 4, dtype=torch.float64)
    values = diagonal.profile(lru.transition(x))
    assert values == pytest.approx([radius**k for k in range(50)], rel=1e-10, abs=1e-300)
    assert diagonal.horizon(values) == pytest.approx(-1 / math.log(radius), rel=1e-10)
    assert torch.allclose(
        diagonal.time_constants(lru.transition(x)), torch.full((8,), -1 / math.log(radius), dtype=torch.float64)
    )
    # independently: run the recurrence k steps from a state v with no input; |h| / |v| per channel is r^k
    v = torch.complex(torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64))
    for k in (1, 5, 20):
        h = scan_sequential(lru.transition(x)[:, -k:], torch.zeros(2, k, 8, dtype=torch.complex128), v)[:, -1]
        assert torch.allclose(h.abs() / v.abs(), torch.full((2, 8), radius**k, dtype=torch.float64), rtol=1e-10)


def _autograd_profile(model: MinGRU, x: torch.Tensor) -> list[float]:
    """||d h_T / d h_(T-k)|| by autograd: the recurrence run from a leaf state at T-k (its Jacobian is diagonal, so
    the gradient of sum(h_T) is that diagonal), largest entry over rows and channels."""
    a, b = model.transition(x).detach(), model.inputs(x).detach()
    steps = x.shape[1]
    out = [1.0]
    for k in range(1, steps):
        leaf = torch.randn(x.shape[0], a.shape[-1], dtype=x.dtype, requires_grad=True)
        h = scan_sequential(a[:, steps - k :], b[:, steps - k :], leaf)[:, -1]
        (diag,) = torch.autograd.grad(h.sum(), leaf)
        out.append(float(diag.abs().max()))
    return out


@pytest.mark.parametrize("seed", [0, 5])
def test_a_mingru_profile_is_the_cumulative_product_of_one_minus_z(seed):
    torch.manual_seed(seed)
    model = MinGRU(4, 6).double()
    x = torch.randn(3, 30, 4, dtype=torch.float64)
    assert torch.allclose(model(x, parallel=True), model(x, parallel=False), atol=1e-12)
    assert torch.allclose(scan_sequential(model.transition(x), model.inputs(x)), model(x), atol=1e-12)
    values = diagonal.profile(model.transition(x))
    assert values == pytest.approx(_autograd_profile(model, x), rel=1e-12)
    crossing = diagonal.horizon(values)
    below = next(k for k, v in enumerate(values) if v <= values[0] / math.e)
    assert below - 1 <= crossing <= below


def test_a_mingru_with_a_constant_gate_has_horizon_minus_one_over_ln_one_minus_z():
    model = MinGRU(3, 4).double()
    with torch.no_grad():
        model.linear_z.weight.zero_()
        model.linear_z.bias.fill_(-2.0)  # z = sigmoid(-2) on every step and channel
    x = torch.randn(2, 80, 3, dtype=torch.float64)
    keep = 1 - torch.sigmoid(torch.tensor(-2.0, dtype=torch.float64)).item()
    assert diagonal.horizon(diagonal.profile(model.transition(x))) == pytest.approx(-1 / math.log(keep), rel=1e-10)


def test_horizon_beyond_the_sequence_is_extrapolated_and_no_decay_is_infinite():
    values = [0.999**k for k in range(50)]
    assert diagonal.horizon(values) == pytest.approx(-1 / math.log(0.999), rel=1e-9)
    assert diagonal.horizon([1.0] * 10) == math.inf
    assert diagonal.horizon([1.0, 0.0, 0.0]) == 1.0
