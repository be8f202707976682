"""GP101: a short horizon is info; declared need, task structure, a stalled loss or a collapse make it a warning."""

import math

import pytest
import torch

import gradprobe
from gradprobe.rules.engine import RuleEngine

from .zoo import BATCH, check, codes, default_tanh_rnn, healthy_lstm


def last_step(out):
    return out[0][-1].sum()


def gp101(report):
    (finding,) = [f for f in report.findings if f.code == "GP101"]
    return finding


def test_short_horizon_alone_is_information():
    """A per-step loss injects gradient everywhere: the short horizon costs nothing measurable."""
    torch.manual_seed(0)
    finding = gp101(check(default_tanh_rnn(), torch.randn(200, BATCH, 1)))
    assert finding.severity == "info" and finding.evidence["evidence"] == [] and not finding.fixes
    assert finding.evidence["horizon"] < 50 and "no evidence that it limits learning" in finding.message
    assert finding.evidence["decay_per_step"] == pytest.approx(math.exp(finding.evidence["rate"]))


def test_declared_need_the_horizon_misses_is_an_error():
    torch.manual_seed(0)
    finding = gp101(check(default_tanh_rnn(), torch.randn(200, BATCH, 1), dependency_length=200))
    assert finding.severity == "error" and finding.evidence["evidence"] == ["declared"]
    assert f"gradient horizon {finding.evidence['horizon']:.0f} steps < the 200 steps the task needs" in finding.message
    assert "orthogonal" in finding.fix and finding.fixes[0].action == "orthogonal-recurrent"


def test_seq_len_is_the_old_name_of_the_need():
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match="seq_len= is deprecated, use dependency_length="):
        report = check(default_tanh_rnn(), torch.randn(200, BATCH, 1), seq_len=200)
    assert gp101(report).severity == "error"


def test_a_loss_on_the_last_step_starves_early_steps():
    torch.manual_seed(0)
    finding = gp101(check(default_tanh_rnn(), torch.randn(200, BATCH, 1), loss_fn=last_step))
    assert finding.severity == "warning" and finding.evidence["evidence"] == ["structure"]
    assert (
        finding.evidence["starved_steps"] > 150
        and "the loss reaches them only through the recurrence" in finding.message
    )


def test_a_met_need_clears_the_horizon():
    torch.manual_seed(1)
    lstm = healthy_lstm()
    x = torch.randn(20, BATCH, 4)
    horizon = check(lstm, x).layers["LSTM.l0"].horizon
    assert "GP101" in codes(check(lstm, x, dependency_length=int(horizon * 3)))
    assert "GP101" not in codes(check(lstm, x, dependency_length=int(horizon / 2)))
    relaxed = check(lstm, x, dependency_length=int(horizon * 3), thresholds={"GP101": {"min_horizon_fraction": 0.2}})
    assert "GP101" not in codes(relaxed)


def test_need_from_pyproject():
    torch.manual_seed(0)
    report = gradprobe.check(default_tanh_rnn(), torch.randn(200, BATCH, 1), config={"dependency-length": 200})
    assert gp101(report).severity == "error"


def test_healthy_lstm_on_short_sequences_is_clean():
    torch.manual_seed(1)
    report = check(healthy_lstm(), torch.randn(20, BATCH, 4))
    assert report.healthy, report.findings
    assert "GP101" not in codes(report, "info")


def _engine_with(losses, horizons, seq_len=50):
    """A replayed run: per-step losses, and deep probes whose profile decays to the given horizons."""
    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [{"name": "rnn", "num_layers": 1}], "settings": {}})
    every = max(len(losses) // len(horizons), 1)
    for step, loss in enumerate(losses):
        engine.feed({"kind": "step", "step": step, "loss": loss, "grad_norm": 1.0, "nonfinite": None})
        if step % every == 0 and step // every < len(horizons):
            h = horizons[step // every]
            engine.feed(
                {
                    "kind": "deep",
                    "step": step,
                    "layer": "rnn.l0",
                    "module": "rnn",
                    "mode": "GRU",
                    "seq_len": seq_len,
                    "horizon": h,
                    "rate": math.log(1e-3) / h if h else 0.0,
                    "grad_norms": [1.0] * seq_len,
                    "epsilon": 1e-3,
                }
            )
    return [f for f in engine.findings() if f.code == "GP101"]


def test_a_stalled_loss_is_the_symptom():
    flat = [1.0 + 0.01 * (i % 3) for i in range(200)]
    (finding,) = _engine_with(flat, [10.0] * 8)
    assert finding.severity == "warning" and finding.evidence["evidence"] == ["stalled-loss"]
    assert "the loss stalled near its start" in finding.message
    falling = [1.0 / (1 + i / 20) for i in range(200)]
    (finding,) = _engine_with(falling, [10.0] * 8)
    assert finding.severity == "info"


def test_a_diverging_loss_is_not_a_stall():
    rising = [1.0 + i / 50 for i in range(200)]
    (finding,) = _engine_with(rising, [10.0] * 8)
    assert "stalled-loss" not in finding.evidence["evidence"]


def test_a_collapsing_horizon_is_a_trend():
    falling = [1.0 / (1 + i / 20) for i in range(200)]
    (finding,) = _engine_with(falling, [40.0] * 5 + [5.0] * 5)
    assert finding.severity == "warning" and finding.evidence["evidence"] == ["collapse"]
    assert "collapsed during training (from 40 steps to 5)" in finding.message


def test_suppressed_per_code():
    torch.manual_seed(0)
    report = check(default_tanh_rnn(), torch.randn(200, BATCH, 1), ignore=["GP101"], dependency_length=200)
    assert "GP101" not in codes(report, "info")


def _starved_run(losses, seq_len=79, window=20):
    """An encoder-decoder whose loss covers the last ``window`` steps: earlier steps get < epsilon of the gradient."""
    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [{"name": "rnn", "num_layers": 1}], "settings": {}})
    profile = [1e-6] * (seq_len - window - 22) + [0.5**k for k in range(22, 0, -1)] + [1.0] * window
    for step, loss in enumerate(losses):
        engine.feed({"kind": "step", "step": step, "loss": loss, "grad_norm": 1.0, "nonfinite": None})
        if step % 25 == 0:
            engine.feed(
                {
                    "kind": "deep",
                    "step": step,
                    "layer": "rnn.l0",
                    "module": "rnn",
                    "mode": "LSTM",
                    "seq_len": seq_len,
                    "horizon": 30.0,
                    "rate": math.log(1e-3) / 30,
                    "grad_norms": profile,
                    "epsilon": 1e-3,
                }
            )
    return [f for f in engine.findings() if f.code == "GP101"]


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_structure_alone_is_no_evidence_while_the_loss_improves(seed):
    """A forecaster whose loss covers its prediction window learns: the starved steps are information."""
    rng = torch.Generator().manual_seed(seed)
    noise = (0.15 * torch.randn(400, generator=rng)).exp().tolist()
    learning = [(0.3 + 2.0 / (1 + i / 25)) * n for i, n in enumerate(noise)]
    (finding,) = _starved_run(learning)
    assert finding.severity == "info" and finding.evidence["evidence"] == []
    assert finding.evidence["starved_steps"] >= 30 and finding.evidence["improvement"] > 0.5


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_structure_warns_once_the_loss_sits_at_a_baseline(seed):
    """The adding problem's broken twin: a first fall to the mean predictor, then nothing more is learned."""
    rng = torch.Generator().manual_seed(seed)
    noise = (0.15 * torch.randn(400, generator=rng)).exp().tolist()
    stuck = [(0.167 + 1.0 * math.exp(-i / 10)) * n for i, n in enumerate(noise)]
    (finding,) = _starved_run(stuck)
    assert finding.severity == "warning" and finding.evidence["evidence"] == ["structure"]


def test_a_horizon_past_the_sequence_is_not_stated_as_a_horizon_over_it():
    """A seq2seq encoder of 10 steps whose fitted decay extrapolates to 25 steps: the message says what was measured."""
    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [{"name": "rnn", "num_layers": 1}], "settings": {"dependency_length": 50}})
    for step in range(60):
        engine.feed({"kind": "step", "step": step, "loss": 1.0 / (1 + step), "grad_norm": 1.0, "nonfinite": None})
        if step % 10 == 0:
            engine.feed(
                {
                    "kind": "deep",
                    "step": step,
                    "layer": "rnn.l0",
                    "module": "rnn",
                    "mode": "GRU",
                    "seq_len": 10,
                    "horizon": 25.0,
                    "rate": math.log(1e-3) / 25,
                    "grad_norms": [1.0] * 10,
                    "epsilon": 1e-3,
                }
            )
    (finding,) = [f for f in engine.findings() if f.code == "GP101"]
    assert "over sequences of 10" not in finding.message
    assert (
        "reaches all 10 steps" in finding.message and "extrapolated horizon 25 steps < the 50 steps" in finding.message
    )
    assert finding.evidence["evidence"] == ["declared"]
