import math

from gradprobe.rules.engine import RuleEngine


def _run(horizon, seq_len, truncation=None):
    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [], "settings": {"truncation": truncation}})
    profile = [math.exp(-k / (horizon / 6.9)) for k in range(seq_len)] if horizon else [1.0] * seq_len
    engine.feed(
        {"kind": "deep", "step": 0, "layer": "rnn.l0", "mode": "LSTM", "seq_len": seq_len, "horizon": horizon,
         "rate": None, "profile": profile}
    )
    return [f for f in engine.findings() if f.code == "GP402"]


def test_window_much_longer_than_the_horizon_wastes_compute():
    (finding,) = _run(12.0, 200)
    assert finding.severity == "info" and finding.evidence["suggested"] == 24
    assert "BPTT over 200 steps but gradients fade after 12" in finding.message


def test_declared_truncation_shorter_than_the_horizon():
    (finding,) = _run(90.0, 20, truncation=20)
    assert finding.severity == "warning" and "truncation 20 steps is short" in finding.message
    (no_decay,) = _run(None, 20, truncation=20)
    assert "does not decay" in no_decay.message


def test_matched_window_is_fine():
    assert not _run(60.0, 100)
