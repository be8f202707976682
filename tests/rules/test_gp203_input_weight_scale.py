import math

import pytest
import torch
from torch import nn

import gradprobe

from .zoo import saturating_lstm


def test_large_input_weights():
    (finding,) = [f for f in gradprobe.lint(saturating_lstm(40.0), config={}) if f.code == "GP203"]
    assert finding.evidence["reference_std"] == pytest.approx(math.sqrt(2 / (4 + 32)))
    assert finding.evidence["ratio"] > 4 and "pre-activations saturate" in finding.message


def test_tiny_input_weights():
    rnn = nn.RNN(16, 16)
    with torch.no_grad():
        rnn.weight_ih_l0.mul_(0.01)
    (finding,) = [f for f in gradprobe.lint(rnn, config={}) if f.code == "GP203"]
    assert finding.evidence["ratio"] < 0.125 and "barely reaches" in finding.message


def test_relu_is_judged_against_he():
    rnn = nn.RNN(16, 16, nonlinearity="relu")
    nn.init.kaiming_normal_(rnn.weight_ih_l0, nonlinearity="relu")
    assert not [f for f in gradprobe.lint(rnn, config={}) if f.code == "GP203"]


@pytest.mark.parametrize("sizes", [(1, 128), (256, 256), (1000, 64)])
def test_torch_default_init_passes(sizes):
    assert not [f for f in gradprobe.lint(nn.LSTM(*sizes), config={}) if f.code == "GP203"]
