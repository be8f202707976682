import math

import pytest
import torch
from torch import nn

import gradprobe

from .zoo import BATCH, check, codes, healthy_lstm, rnn_with_spectral_norm


def test_spectral_norm_three_risks_explosion():
    (finding,) = [f for f in gradprobe.lint(rnn_with_spectral_norm(3.0), config={}) if f.code == "GP201"]
    assert finding.evidence["sigma_max"] == pytest.approx(3.0, rel=1e-5)
    assert finding.severity == "warning" and "gradients can explode" in finding.message


def test_small_spectral_norm_guarantees_vanishing_as_information():
    """Whether guaranteed vanishing hurts depends on the task: a measurement alone is info (GP101 judges with evidence)."""
    (finding,) = [f for f in gradprobe.lint(rnn_with_spectral_norm(0.5), config={}) if f.code == "GP201"]
    assert finding.evidence["product"] == pytest.approx(0.5, rel=1e-5)
    assert finding.severity == "info" and "vanish at least like 0.50^k" in finding.message


@pytest.mark.parametrize("seed", range(10))
def test_orthogonal_and_default_init_pass(seed):
    torch.manual_seed(seed)
    assert not [f for f in gradprobe.lint(rnn_with_spectral_norm(1.0), config={}) if f.code == "GP201"]
    assert not [f for f in gradprobe.lint(nn.RNN(8, 256), config={}) if f.code == "GP201" and f.severity != "info"]


def test_gated_cells_are_judged_on_the_candidate_block():
    lstm = healthy_lstm()
    with torch.no_grad():
        lstm.weight_hh_l0[64:96].mul_(5)  # the cell candidate block g: sigma 5 > 4
    (finding,) = [f for f in gradprobe.lint(lstm, config={}) if f.code == "GP201"]
    assert finding.evidence["sigma_max"] == pytest.approx(5.0, rel=1e-5) and "> 4 in LSTM.l0" in finding.message
    assert "GP201" not in codes(check(healthy_lstm(), torch.randn(10, BATCH, 4)), "info")


def test_threshold_from_keyword():
    found = gradprobe.lint(rnn_with_spectral_norm(3.0), thresholds={"GP201": {"explode_above": 4.0}}, config={})
    assert "GP201" not in {f.code for f in found}


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_a_recurrence_with_no_memory_is_a_warning(seed):
    """W_hh x0.05 (sigma_max ~0.06): ||dh_t/dh_(t-k)|| <= 0.06^k is under 1e-3 within 3 steps, whatever the inputs."""
    torch.manual_seed(seed)
    rnn = nn.RNN(4, 64)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.05)
    sigma = float(torch.linalg.matrix_norm(rnn.weight_hh_l0.detach().double(), ord=2))
    (finding,) = [f for f in gradprobe.lint(rnn, config={}) if f.code == "GP201"]
    assert finding.severity == "warning" and "carries no memory" in finding.message
    assert finding.evidence["max_horizon"] == pytest.approx(math.log(1e-3) / math.log(sigma), rel=1e-9)
    assert finding.evidence["max_horizon"] < 3
    report = gradprobe.check(rnn, torch.randn(30, 4, 4), config={})
    assert report.layers["RNN.l0"].horizon is not None and report.layers["RNN.l0"].horizon <= 3  # the bound holds


def test_a_short_but_real_memory_stays_information():
    torch.manual_seed(0)
    rnn = nn.RNN(4, 64)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.5)  # sigma_max ~0.6: up to ~13 steps of memory
    (finding,) = [f for f in gradprobe.lint(rnn, config={}) if f.code == "GP201"]
    assert finding.severity == "info" and finding.evidence["max_horizon"] > 3
