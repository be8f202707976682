import pytest
import torch
from torch import nn

import gradprobe

from .zoo import lstm_with_forget_bias


@pytest.mark.parametrize(("bias", "severity"), [(-3.0, "error"), (-1.0, "warning"), (-0.1, "info")])
def test_severity_follows_the_bias(bias, severity):
    (finding,) = [f for f in gradprobe.lint(lstm_with_forget_bias(bias), config={}) if f.code == "GP202"]
    assert finding.severity == severity
    assert finding.evidence["forget_bias"] == pytest.approx(bias)
    assert finding.evidence["resting_forget_gate"] == pytest.approx(torch.sigmoid(torch.tensor(bias)).item())


def test_positive_forget_bias_passes():
    assert not [f for f in gradprobe.lint(lstm_with_forget_bias(1.0), config={}) if f.code == "GP202"]


def test_lstm_without_bias_is_informed():
    (finding,) = [f for f in gradprobe.lint(nn.LSTM(3, 4, bias=False), config={}) if f.code == "GP202"]
    assert finding.severity == "info" and "no biases" in finding.message


def test_every_layer_and_direction_is_checked():
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias"):
                p[4:8] = -1.0
    layers = sorted(f.layer for f in gradprobe.lint(lstm, config={}) if f.code == "GP202")
    assert layers == ["LSTM.l0", "LSTM.l0_reverse", "LSTM.l1", "LSTM.l1_reverse"]
