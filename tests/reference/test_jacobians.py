"""Analytic per-step Jacobians equal torch.func.jacrev."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev, vmap

from gradprobe import reference
from gradprobe.reference import functional as fn

B, IN, H = 4, 3, 5


def _autodiff_jacobian(mode, x_proj, state, weights, hidden, proj):
    def step_flat(xp, flat):
        s = fn.unflatten_state(mode, flat, hidden, proj)
        return fn.flatten_state(fn.step(mode, xp.unsqueeze(0), tuple(t.unsqueeze(0) for t in s), weights)).squeeze(0)

    return vmap(jacrev(step_flat, argnums=1))(x_proj, fn.flatten_state(state))


NONLINEARITY = {"RNN_RELU": "relu", "RNN_LEAKY_RELU": "leaky_relu"}


@pytest.mark.parametrize(
    ("mode", "proj"),
    [("RNN_TANH", 0), ("RNN_RELU", 0), ("RNN_LEAKY_RELU", 0), ("LSTM", 0), ("LSTM", 2), ("GRU", 0)],
)
@pytest.mark.parametrize("scale", [0.5, 3.0], ids=["moderate", "saturating"])
def test_layer_jacobian_matches_jacrev(mode, proj, scale):
    torch.manual_seed(1)
    cls = {
        "RNN_TANH": reference.RNN,
        "RNN_RELU": reference.RNN,
        "RNN_LEAKY_RELU": reference.RNN,
        "LSTM": reference.LSTM,
        "GRU": reference.GRU,
    }[mode]
    extra = {"nonlinearity": NONLINEARITY[mode]} if mode in NONLINEARITY else {"proj_size": proj} if proj else {}
    layer = cls(IN, H, dtype=torch.float64, **extra)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(scale)
    weights = layer.layer_weights(0)
    x_proj = fn.project_input(mode, torch.randn(B, IN, dtype=torch.float64), weights)
    out = proj or H
    state = (torch.randn(B, out, dtype=torch.float64),)
    if mode == "LSTM":
        state += (torch.randn(B, H, dtype=torch.float64),)
    analytic = fn.jacobian(mode, x_proj, state, weights)
    expected = _autodiff_jacobian(mode, x_proj, state, weights, H, proj)
    assert analytic.shape == (B, fn.state_size(mode, H, proj), fn.state_size(mode, H, proj))
    torch.testing.assert_close(analytic, expected, rtol=0, atol=1e-6)
    assert expected.abs().max() > 1e-3  # the comparison is not between two zero tensors


@pytest.mark.parametrize(
    "cell_cls, extra",
    [
        (reference.RNNCell, {}),
        (reference.RNNCell, {"nonlinearity": "relu"}),
        (reference.LSTMCell, {}),
        (reference.GRUCell, {}),
        (reference.GRUCell, {"bias": False}),
    ],
)
def test_cell_jacobian_matches_jacrev(cell_cls, extra):
    torch.manual_seed(2)
    cell = cell_cls(IN, H, dtype=torch.float64, **extra)
    x = torch.randn(B, IN, dtype=torch.float64)
    h = torch.randn(B, H, dtype=torch.float64)
    state = (h, torch.randn(B, H, dtype=torch.float64)) if cell.mode == "LSTM" else h

    def step_flat(xi, flat):
        s = (flat[:H], flat[H:]) if cell.mode == "LSTM" else flat
        out = cell(xi, s)
        return torch.cat(out) if cell.mode == "LSTM" else out

    flat = torch.cat(state, dim=1) if cell.mode == "LSTM" else h
    expected = vmap(jacrev(step_flat, argnums=1))(x, flat)
    torch.testing.assert_close(cell.jacobian(x, state), expected, rtol=0, atol=1e-6)
    single = cell.jacobian(x[0], tuple(s[0] for s in state) if cell.mode == "LSTM" else h[0])
    torch.testing.assert_close(single, expected[0], rtol=0, atol=1e-6)


def test_linear_regime_jacobian_is_the_recurrent_matrix():
    """With tiny weights tanh is linear near 0, so dh_t/dh_{t-1} -> W_hh (theory check)."""
    cell = reference.RNNCell(IN, H, bias=False, dtype=torch.float64)
    x = torch.zeros(1, IN, dtype=torch.float64)
    h = torch.zeros(1, H, dtype=torch.float64)
    torch.testing.assert_close(cell.jacobian(x, h)[0], cell.weight_hh.detach(), rtol=0, atol=1e-12)


def test_lstm_jacobian_cell_block_is_forget_gate():
    """d c_t / d c_{t-1} = diag(f_t) exactly."""
    cell = reference.LSTMCell(IN, H, dtype=torch.float64)
    x, h, c = (torch.randn(2, n, dtype=torch.float64) for n in (IN, H, H))
    jac = cell.jacobian(x, (h, c))
    gates = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    forget = torch.sigmoid(gates.chunk(4, dim=1)[1])
    torch.testing.assert_close(jac[:, H:, H:], torch.diag_embed(forget).detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("mode", "proj"),
    [("RNN_TANH", 0), ("RNN_RELU", 0), ("RNN_LEAKY_RELU", 0), ("LSTM", 0), ("LSTM", 2), ("GRU", 0)],
)
def test_linearization_products_match_the_jacobian(mode, proj):
    torch.manual_seed(5)
    cls = {
        "RNN_TANH": reference.RNN,
        "RNN_RELU": reference.RNN,
        "RNN_LEAKY_RELU": reference.RNN,
        "LSTM": reference.LSTM,
        "GRU": reference.GRU,
    }[mode]
    extra = {"nonlinearity": NONLINEARITY[mode]} if mode in NONLINEARITY else {"proj_size": proj} if proj else {}
    weights = cls(IN, H, dtype=torch.float64, **extra).layer_weights(0)
    x_proj = fn.project_input(mode, torch.randn(B, IN, dtype=torch.float64), weights)
    state = (torch.randn(B, proj or H, dtype=torch.float64),)
    if mode == "LSTM":
        state += (torch.randn(B, H, dtype=torch.float64),)
    jac = fn.jacobian(mode, x_proj, state, weights)
    lin = fn.Linearization(mode, x_proj, state, weights)
    size = fn.state_size(mode, H, proj)
    u = torch.randn(B, size, dtype=torch.float64)
    torch.testing.assert_close(lin.jvp(u), torch.einsum("bij,bj->bi", jac, u), rtol=0, atol=1e-12)
    torch.testing.assert_close(lin.vjp(u), torch.einsum("bi,bij->bj", u, jac), rtol=0, atol=1e-12)
    # a row subset uses the matching precomputed factors
    torch.testing.assert_close(
        lin.jvp(u[1:3], slice(1, 3)), torch.einsum("bij,bj->bi", jac[1:3], u[1:3]), rtol=0, atol=1e-12
    )
    assert set(lin.gates) == set(fn.gate_activations(mode, x_proj, state, weights))
