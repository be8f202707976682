"""The information-flow regularizer (Pascanu, Mikolov, Bengio 2013) against theory and finite differences."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.fixes.flow import FlowRegularizer, flow_penalty
from gradprobe.reference import from_torch

T, B, H = 8, 3, 4


class LinearCell(nn.Module):
    """``h' = W h + U x``: a linear recurrence."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.rec = nn.Linear(H, H, bias=False).double()
        self.inp = nn.Linear(2, H, bias=False).double()
        with torch.no_grad():
            self.rec.weight.copy_(weight)

    def forward(self, x, h):
        return self.rec(h) + self.inp(x)


class Loop(nn.Module):
    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x):
        h, out = torch.zeros(x.shape[1], H, dtype=x.dtype, requires_grad=True), []
        for x_t in x:
            h = self.cell(x_t, h)
            out.append(h)
        return torch.stack(out)


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, 2, generator=g, dtype=torch.float64), torch.randn(
        T, B, H, generator=g, dtype=torch.float64
    )


def test_omega_is_zero_for_an_orthogonal_linear_recurrence():
    q, _ = torch.linalg.qr(torch.randn(H, H, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    model = Loop(LinearCell(q))
    x, r = _data()
    reg = FlowRegularizer(model, weight=1.0, cells=["cell"])
    loss = (model(x) * r).sum()
    penalty = reg(loss)
    assert len(reg.pairs) == 0 and reg.last is not None
    assert abs(float(penalty.detach())) < 1e-24


def test_omega_for_a_scaled_recurrence_is_the_known_sum():
    """W = 0.5 I: ||g W|| / ||g|| = 0.5 at every step: Omega = T * 0.25 (T steps with a previous state in the graph)."""
    model = Loop(LinearCell(0.5 * torch.eye(H, dtype=torch.float64)))
    x, r = _data()
    reg = FlowRegularizer(model, weight=2.0, cells=["cell"])
    penalty = reg((model(x) * r).sum())
    assert float(penalty.detach()) == pytest.approx(2.0 * T * 0.25, rel=1e-12)


def test_its_gradient_with_respect_to_w_hh_matches_finite_differences():
    torch.manual_seed(0)
    cell = nn.RNNCell(2, H).double()
    model = Loop(cell)
    x, r = _data()
    reg = FlowRegularizer(model, weight=1.0, cells=["cell"])
    loss = (model(x) * r).sum()
    pairs = list(reg.pairs)
    grads = [g.detach() for g in torch.autograd.grad(loss, [new for _, new in pairs], retain_graph=True)]
    omega = flow_penalty(pairs, grads)
    (analytic,) = torch.autograd.grad(omega, cell.weight_hh)
    reg.pairs = []

    def omega_at(weight: torch.Tensor) -> float:  # the same fixed g, the forward re-run at another W_hh
        with torch.no_grad():
            cell.weight_hh.copy_(weight)
        model(x)
        found = list(reg.pairs)
        reg.pairs = []
        return float(flow_penalty(found, grads).detach())

    base = cell.weight_hh.detach().clone()
    eps = 1e-6
    numeric = torch.zeros_like(base)
    for i in range(H):
        for j in range(H):
            bump = torch.zeros_like(base)
            bump[i, j] = eps
            numeric[i, j] = (omega_at(base + bump) - omega_at(base - bump)) / (2 * eps)
    assert torch.allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_reference_twins_of_fused_modules_are_regularized_and_fused_ones_refused():
    torch.manual_seed(0)
    fused = nn.RNN(2, H).double()
    with pytest.raises(ValueError, match="from_torch"):
        FlowRegularizer(fused)
    twin = from_torch(fused)
    reg = FlowRegularizer(twin, weight=1.0)
    x, r = _data()
    out, _ = twin(x)
    penalty = reg((out * r).sum())
    assert float(penalty.detach()) > 0 and penalty.requires_grad
    penalty.backward()
    assert twin.weight_hh_l0.grad is not None and float(twin.weight_hh_l0.grad.norm()) > 0
    reg.remove()
    twin(x)
    assert reg.pairs == []


def test_it_is_reachable_as_documented():
    assert gradprobe.fixes.FlowRegularizer is FlowRegularizer


def test_with_clipping_it_learns_a_50_step_dependency_that_clipping_alone_does_not():
    """benchmarks/flow_regularizer.py, reduced: the sign of the first of 50 inputs, a tanh RNNCell, SGD."""
    import argparse
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "flow_regularizer.py"
    spec = importlib.util.spec_from_file_location("flow_benchmark", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(
        task="sign", seq_len=50, steps=1000, hidden=32, batch=32, lr=0.01, weight=1.0, report=1000, seed=0
    )
    clipped = bench.run("clip", args)[-1][1]
    regularized = bench.run("clip+omega", args)[-1][1]
    assert clipped <= 0.6 and regularized >= 0.95, (clipped, regularized)
