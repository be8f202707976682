"""Using gradprobe in a test suite (the plugin is active once gradprobe is installed).

pytest examples/test_gradient_health.py --gradprobe-report findings.json
"""

import pytest
import torch
from torch import nn

from gradprobe.fixes import reinit
from gradprobe.testing import GradientHealthError


def make_encoder() -> nn.LSTM:
    lstm = nn.LSTM(8, 32, num_layers=2)
    for module_init in (reinit.orthogonal_recurrent_, lambda m: reinit.forget_bias_(m, 1.0)):
        module_init(lstm)
    return lstm


def test_encoder_carries_gradients_over_the_sequence(gradprobe):
    """Fails with the findings (code, layer, evidence, fix) if the encoder is unhealthy."""
    torch.manual_seed(0)
    gradprobe.assert_healthy(make_encoder(), torch.randn(25, 4, 8), dependency_length=25)


@pytest.mark.gradprobe(thresholds={"GP101": {"min_horizon_fraction": 0.5}}, ignore=["GP402"])
def test_with_relaxed_thresholds(gradprobe):
    torch.manual_seed(0)
    report = gradprobe.assert_healthy(make_encoder(), torch.randn(40, 4, 8))
    assert report.layers["LSTM.l1"].seq_len == 40


def test_a_vanilla_rnn_on_long_sequences_is_caught(gradprobe):
    """The task needs 200 steps of memory: a default tanh RNN carries gradients for ~15."""
    torch.manual_seed(0)
    with pytest.raises(GradientHealthError, match="GP101 vanishing-gradient"):
        gradprobe.assert_healthy(nn.RNN(8, 32), torch.randn(200, 4, 8), dependency_length=200)


@pytest.mark.gradprobe(dependency_length=200)
def test_the_need_can_come_from_the_marker(gradprobe):
    torch.manual_seed(0)
    with pytest.raises(GradientHealthError, match="< the 200 steps the task needs"):
        gradprobe.assert_healthy(nn.RNN(8, 32), torch.randn(200, 4, 8))
