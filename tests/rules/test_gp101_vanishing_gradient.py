import math

import pytest
import torch

from .zoo import BATCH, check, codes, default_tanh_rnn, healthy_lstm


def test_default_init_tanh_rnn_on_200_steps_vanishes():
    torch.manual_seed(0)
    report = check(default_tanh_rnn(), torch.randn(200, BATCH, 1))
    (finding,) = [f for f in report.findings if f.code == "GP101"]
    assert finding.name == "vanishing-gradient" and finding.layer == "RNN.l0"
    assert finding.evidence["seq_len"] == 200
    assert finding.evidence["horizon"] < 50 and finding.severity == "error"
    assert finding.evidence["decay_per_step"] == pytest.approx(math.exp(finding.evidence["rate"]))
    assert f"gradient horizon {finding.evidence['horizon']:.0f} steps < sequence length 200" in finding.message
    assert "orthogonal" in finding.fix


def test_healthy_lstm_on_short_sequences_is_clean():
    torch.manual_seed(1)
    report = check(healthy_lstm(), torch.randn(20, BATCH, 4))
    assert report.healthy, report.findings
    assert "GP101" not in codes(report, "info")


def test_required_length_and_threshold_are_configurable():
    torch.manual_seed(1)
    lstm = healthy_lstm()
    x = torch.randn(20, BATCH, 4)
    horizon = check(lstm, x).layers["LSTM.l0"].horizon
    assert "GP101" in codes(check(lstm, x, seq_len=int(horizon * 3)))  # needs dependencies beyond the horizon
    relaxed = check(lstm, x, seq_len=int(horizon * 3), thresholds={"GP101": {"min_horizon_fraction": 0.2}})
    assert "GP101" not in codes(relaxed)


def test_suppressed_per_code():
    torch.manual_seed(0)
    report = check(default_tanh_rnn(), torch.randn(200, BATCH, 1), ignore=["GP101"])
    assert "GP101" not in codes(report, "info")
