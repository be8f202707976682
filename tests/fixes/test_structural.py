import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gradprobe
from gradprobe import fixes
from gradprobe.fixes import ResidualRecurrentStack, TruncatedBPTT, residual_stack, truncation_length

from ..rules.zoo import BATCH, default_tanh_rnn, lstm_with_forget_bias, relu_rnn_negative_bias


def test_residual_stack_adds_skips_to_the_same_weights():
    torch.manual_seed(0)
    fused = nn.LSTM(6, 6, num_layers=3)
    stack = residual_stack(fused)
    assert isinstance(stack, ResidualRecurrentStack) and len(stack.layers) == 3
    x = torch.randn(7, 2, 6)
    out, (h, c) = stack(x)
    # by hand: each layer gets the previous output, and its input is added back
    inp = x
    for index in range(3):
        layer = nn.LSTM(6, 6)
        layer.load_state_dict({k: getattr(fused, k.replace("_l0", f"_l{index}")) for k in layer.state_dict()})
        y, _ = layer(inp)
        inp = y + inp
    torch.testing.assert_close(out, inp)
    assert h.shape == (3, 2, 6) and c.shape == (3, 2, 6)


def test_residual_stack_takes_packed_input_and_initial_state():
    fused = nn.GRU(4, 4, num_layers=2, bidirectional=True)
    stack = residual_stack(fused)
    packed = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 2, 4]), enforce_sorted=False)
    out, h = stack(packed, torch.zeros(4, 3, 4))
    assert out.data.shape == (11, 8) and h.shape == (4, 3, 4)
    with pytest.raises(TypeError):
        residual_stack(nn.Linear(2, 2))


def test_truncation_length_and_windows():
    assert truncation_length(12.0, 200) == 24
    assert truncation_length(None, 200) == 200
    assert truncation_length(2.0, 200) == 8 and truncation_length(500.0, 200) == 200
    x, y = torch.arange(10).view(10, 1), torch.arange(10).view(10, 1) * 2
    windows = list(TruncatedBPTT(4).windows(x, y))
    assert [w[0].flatten().tolist() for w in windows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    h = torch.ones(2, requires_grad=True) * 2
    assert not TruncatedBPTT.detach((h, (h,)))[1][0].requires_grad


def test_apply_reinitializes_what_the_findings_name():
    torch.manual_seed(0)
    model = nn.Module()
    model.enc = lstm_with_forget_bias(-3.0)
    model.dec = relu_rnn_negative_bias()
    findings = gradprobe.lint(model, config={})
    findings += gradprobe.check(model.enc, torch.randn(40, BATCH, 4), config={}, dependency_length=40).findings
    findings = [f._replace(layer=f.layer.replace("LSTM", "enc")) if f.layer.startswith("LSTM") else f for f in findings]
    findings.append(gradprobe.Finding("GP302", "dead-relu", "error", "dec", 0, "dead", {}))
    applied = fixes.apply(model, findings)
    actions = {(a.layer, a.action.split(" (")[0].split(":")[0]) for a in applied}
    assert ("enc", "chrono init of forget/input biases") in actions
    assert ("enc", "orthogonal recurrent weights") in actions
    assert ("dec", "identity recurrent weights, zero biases") in actions and ("dec", "He input weights") in actions
    assert torch.equal(model.dec.weight_hh_l0.detach(), torch.eye(32)) and model.dec.bias_ih_l0.abs().sum() == 0
    forget = (model.enc.bias_ih_l0 + model.enc.bias_hh_l0)[32:64]
    assert forget.min() >= 0  # chrono: log(U[1, T-1]) >= 0
    assert not [f for f in gradprobe.lint(model, config={}) if f.code == "GP202" and f.severity != "info"]


def test_apply_residual_replaces_a_vanishing_stack():
    torch.manual_seed(0)
    model = nn.Module()
    model.rnn = nn.RNN(8, 8, num_layers=3)
    finding = gradprobe.Finding("GP101", "vanishing-gradient", "error", "rnn.l0", 0, "", {"seq_len": 50})
    applied = fixes.apply(model, [finding], residual=True)
    assert isinstance(model.rnn, ResidualRecurrentStack)
    assert any("residual" in a.action for a in applied)


def test_info_findings_change_nothing():
    torch.manual_seed(0)
    model = default_tanh_rnn()
    report = gradprobe.check(model, torch.randn(100, BATCH, 1), config={})  # per-step loss: no evidence
    assert {f.severity for f in report.findings if f.code == "GP101"} == {"info"}
    before = model.weight_hh_l0.detach().clone()
    assert fixes.apply(model, report.findings) == [] and torch.equal(before, model.weight_hh_l0)


def test_step_fixes_follow_the_codes():
    f = lambda code, **e: gradprobe.Finding(code, "", "error", None, 0, "", e)
    kinds = [type(x).__name__ for x in fixes.step_fixes([f("GP103"), f("GP401", suggested_max_norm=3.0)])]
    assert kinds == ["NonFiniteGuard", "ClipGradNorm"]
    assert fixes.step_fixes([f("GP401", suggested_max_norm=3.0)])[0].max_norm == 3.0


def test_default_rnn_fix_on_vanishing_is_orthogonal():
    """A loss on the last step of 100: the early steps get no gradient (structure evidence), the fix is data."""
    torch.manual_seed(0)
    model = default_tanh_rnn()
    report = gradprobe.check(model, torch.randn(100, BATCH, 1), lambda out: out[0][-1].sum(), config={})
    (finding,) = [f for f in report.findings if f.code == "GP101"]
    assert finding.severity == "warning" and [f.action for f in finding.fixes] == [
        "orthogonal-recurrent",
        "use-gated-cell",
    ]
    assert [f.safety for f in finding.fixes] == ["unsafe", "display-only"]
    applied = fixes.apply(model, report.findings)
    assert [a.action for a in applied] == ["orthogonal recurrent weights"]
    assert [a.action_id for a in applied] == ["orthogonal-recurrent"]
    w = model.weight_hh_l0.detach()
    torch.testing.assert_close(w.T @ w, torch.eye(64), atol=1e-5, rtol=0)
