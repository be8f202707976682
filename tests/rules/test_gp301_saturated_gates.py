import re

import pytest
import torch

import gradprobe

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


def _saturated_rnn(recurrent=1.0, inputs=1.0):
    rnn = torch.nn.RNN(8, 64)
    with torch.no_grad():
        torch.nn.init.orthogonal_(rnn.weight_hh_l0)
        rnn.weight_hh_l0.mul_(recurrent)
        rnn.weight_ih_l0.mul_(inputs)
    return rnn


def _gp301(report):
    (finding,) = [f for f in report.findings if f.code == "GP301"]
    return finding


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_recurrent_weights_that_saturate_are_blamed_and_fixed_alone(seed):
    """A tanh RNN saturated by its recurrent weights (sigma_max 5): the fix re-initializes W_hh, never the fine W_ih."""
    torch.manual_seed(seed)
    rnn = _saturated_rnn(recurrent=5.0)
    finding = _gp301(check(rnn, torch.randn(60, BATCH, 8)))
    assert finding.severity in ("warning", "error") and finding.evidence["from_start"]
    assert [f.action for f in finding.fixes] == ["orthogonal-recurrent"]
    assert finding.evidence["recurrent_sigma_max"] == pytest.approx(5.0, rel=0.02)
    assert "recurrent weights with sigma_max 5" in finding.message
    input_before = rnn.weight_ih_l0.detach().clone()
    applied = gradprobe.fixes.apply(rnn, [finding])
    assert [a.action_id for a in applied] == ["orthogonal-recurrent"]
    assert torch.equal(rnn.weight_ih_l0, input_before)
    assert torch.linalg.matrix_norm(rnn.weight_hh_l0.detach(), ord=2) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_input_weights_that_saturate_are_blamed(seed):
    torch.manual_seed(seed)
    finding = _gp301(check(_saturated_rnn(inputs=40.0), torch.randn(60, BATCH, 8)))
    assert [f.action for f in finding.fixes] == ["xavier-input"]
    assert "input weights at" in finding.message and finding.evidence["input_std_ratio"] > 4


def test_large_inputs_with_weights_in_range_blame_the_inputs():
    torch.manual_seed(0)
    finding = _gp301(check(_saturated_rnn(), 30 * torch.randn(60, BATCH, 8)))
    assert finding.fixes[0].action == "normalize-inputs"
    assert "the inputs' scale is the suspect" in finding.message


def _info_from_a_run(losses):
    """GP301 over events: tanh outputs saturating later in training (not from the first samples)."""
    from gradprobe.rules.engine import RuleEngine

    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [], "settings": {}})
    for step, loss in enumerate(losses):
        engine.feed({"kind": "step", "step": step, "loss": loss, "grad_norm": 1.0})
        share = 0.0 if step < len(losses) // 4 else 0.99
        if step % 2 == 0:
            engine.feed(
                {
                    "kind": "saturation",
                    "step": step,
                    "layer": "rnn.l0",
                    "mode": "RNN_TANH",
                    "fractions": {"tanh": share},
                }
            )
    return [f for f in engine.findings() if f.code == "GP301"]


def test_an_info_finding_says_the_loss_improves_only_when_it_did():
    """A loss that went up and came back (8.28 -> 14.6 -> 8.28) has not improved: the finding says what was
    measured, not 'while the loss improves'."""
    round_trip = [8.28] * 20 + [14.6] * 20 + [8.28] * 20
    falling = [8.28 * 0.98**step for step in range(60)]
    (flat,) = _info_from_a_run(round_trip)
    (improving,) = _info_from_a_run(falling)
    assert flat.severity == improving.severity == "info"
    assert "improves" not in flat.message and "shows no harm yet" in flat.message
    assert re.search(r"while the loss improves \(\d+% of its start gone\)", improving.message)


def test_saturation_that_developed_says_since_when():
    """The first sample of the unbroken stretch over the limit (step 16 here: the shares are 0 before step 15),
    to the last sample (step 58)."""
    (finding,) = _info_from_a_run([1.0] * 60)
    assert (finding.first_step, finding.last_step) == (16, 58)
