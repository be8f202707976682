import torch

from .zoo import BATCH, check, codes, healthy_lstm, lstm_with_forget_bias, saturating_lstm


def test_saturating_pre_activations():
    torch.manual_seed(0)
    report = check(saturating_lstm(40.0), torch.randn(50, BATCH, 4))
    (finding,) = [f for f in report.findings if f.code == "GP301"]
    assert finding.evidence["fraction"] > 0.5
    assert finding.evidence["gate"] in ("cell", "cell_state", "input", "output")
    assert "saturated in LSTM.l0" in finding.message


def test_closed_forget_gate():
    torch.manual_seed(0)
    report = check(lstm_with_forget_bias(-3.0), torch.randn(50, BATCH, 4))
    (finding,) = [f for f in report.findings if f.code == "GP301"]
    assert finding.evidence["gate"] == "forget" and "closed" in finding.message


def test_open_forget_gate_is_not_saturation():
    torch.manual_seed(0)
    report = check(lstm_with_forget_bias(6.0), torch.randn(20, BATCH, 4))
    assert report.layers["LSTM.l0"].saturation["forget"] > 0.9  # sigmoid(6) = 0.998: "saturated" open
    assert "GP301" not in codes(report, "info")


def test_healthy_lstm_is_not_saturated():
    torch.manual_seed(0)
    assert "GP301" not in codes(check(healthy_lstm(), torch.randn(20, BATCH, 4)), "info")
