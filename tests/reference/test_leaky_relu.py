"""The reference RNN with a leaky ReLU (torch.nn.RNN has none): exact, measured like the built-ins, and GP302's advice."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import gradprobe
from gradprobe.cell_modes import LEAKY_SLOPE
from gradprobe.reference import RNN, RNNCell


def test_the_leaky_rnn_equals_a_hand_written_loop_and_takes_nn_rnn_weights():
    torch.manual_seed(0)
    torch_rnn = nn.RNN(3, 5, nonlinearity="relu").double()
    leaky = RNN(3, 5, nonlinearity="leaky_relu").double()
    leaky.load_state_dict(torch_rnn.state_dict())  # same keys as nn.RNN
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    out, h_n = leaky(x)
    h, expected = torch.zeros(2, 5, dtype=torch.float64), []
    for x_t in x:
        h = F.leaky_relu(
            x_t @ torch_rnn.weight_ih_l0.t()
            + torch_rnn.bias_ih_l0
            + h @ torch_rnn.weight_hh_l0.t()
            + torch_rnn.bias_hh_l0,
            LEAKY_SLOPE,
        )
        expected.append(h)
    assert torch.allclose(out, torch.stack(expected), atol=1e-12) and torch.allclose(h_n[0], h, atol=1e-12)
    assert "leaky_relu" in repr(leaky)
    cell = RNNCell(3, 5, nonlinearity="leaky_relu").double()
    assert cell.mode == "RNN_LEAKY_RELU"


def _dead_relu_rnn() -> nn.Module:
    torch.manual_seed(0)
    rnn = nn.RNN(4, 16, nonlinearity="relu")
    with torch.no_grad():
        rnn.bias_ih_l0[:12] = -3.0  # 12 of 16 pre-activations always below zero: those units are dead
    return rnn


def _findings(model: nn.Module) -> dict[str, gradprobe.Finding]:
    events: list[dict] = []
    with gradprobe.attach(model, every=5, saturation_every=2, config={}, sinks=[events.append]) as probe:
        for _ in range(10):
            model(torch.rand(20, 8, 4))[0].sum().backward()
            probe.step()
            model.zero_grad()
    return {f.code: f for f in probe.findings}, events


def test_gp302_advises_what_works_and_apply_revives_the_units():
    model = _dead_relu_rnn()
    found, _ = _findings(model)
    actions = [fix.action for fix in found["GP302"].fixes]
    assert actions == ["identity-recurrent", "positive-bias", "leaky-relu-rnn"]
    assert "nonlinearity='leaky_relu'" in found["GP302"].fix
    applied = gradprobe.fixes.apply(model, [found["GP302"]])
    assert [a.action_id for a in applied] == ["identity-recurrent", "positive-bias"]
    assert torch.all(model.bias_ih_l0 == 0.1) and torch.all(model.bias_hh_l0 == 0)
    assert "GP302" not in _findings(model)[0]


def test_on_the_leaky_side_the_jacobian_is_the_slope_times_w_hh():
    torch.manual_seed(0)
    model = RNN(4, 16, nonlinearity="leaky_relu").double()
    with torch.no_grad():
        model.bias_ih_l0.fill_(-50.0)  # every unit on its leaky side at every step
    report = gradprobe.check(model, torch.rand(20, 4, 4, dtype=torch.float64), config={})
    sigma = float(torch.linalg.matrix_norm(model.weight_hh_l0.detach(), ord=2))
    norms = report.layers["RNN.l0"].jacobian_norms
    assert all(abs(v - LEAKY_SLOPE * sigma) <= 0.02 * LEAKY_SLOPE * sigma for v in norms[1:])


def test_a_leaky_reference_rnn_is_measured_and_never_dead():
    torch.manual_seed(0)
    model = RNN(4, 16, nonlinearity="leaky_relu")
    model.load_state_dict(_dead_relu_rnn().state_dict())  # the same dead-looking weights
    found, events = _findings(model)
    assert "GP302" not in found and "GP301" not in found
    deep = [e for e in events if e["kind"] == "deep"]
    assert deep and deep[0]["mode"] == "RNN_LEAKY_RELU" and deep[0]["grad_norms"][0] > 0  # the gradient still flows
    saturation = [e for e in events if e["kind"] == "saturation"]
    assert saturation and saturation[0]["fractions"]["leaky_relu"] >= 12 / 16  # most units on their leaky side
    assert all(v > 0 for v in deep[0]["jacobian_norms"])
