import math

from gradprobe.rules.engine import RuleEngine


def _deep(step, horizon, seq_len, layer="rnn.l0", per_token=True):
    """A deep event whose profile decays to 1e-3 over ``horizon`` steps (flat when ``horizon`` is None)."""
    profile = [math.exp(-k / (horizon / 6.9)) for k in range(seq_len)] if horizon else [1.0] * seq_len
    grads = [1.0] * seq_len if per_token else list(reversed(profile))  # a loss at every step, or at the last one
    return {
        "kind": "deep",
        "step": step,
        "layer": layer,
        "module": "rnn",
        "mode": "LSTM",
        "seq_len": seq_len,
        "horizon": horizon,
        "rate": None,
        "profile": profile,
        "grad_norms": grads,
        "epsilon": 1e-3,
    }


def _run(horizon, seq_len, truncation=None, layer="rnn.l0", bidirectional=False, per_token=True, need=None):
    engine = RuleEngine({})
    layers = [{"name": "rnn", "bidirectional": bidirectional, "num_layers": 1}]
    engine.feed({"kind": "meta", "layers": layers, "settings": {"truncation": truncation, "dependency_length": need}})
    engine.feed(_deep(0, horizon, seq_len, layer, per_token))
    return [f for f in engine.findings() if f.code == "GP402"], engine.findings()


def test_declared_window_much_longer_than_a_healthy_horizon_wastes_compute():
    (finding,), _ = _run(12.0, 200, truncation=200)
    assert finding.severity == "info" and finding.evidence["suggested"] == 24
    assert "BPTT over 200 steps but gradients fade after 12" in finding.message
    assert [(f.action, f.params, f.safety) for f in finding.fixes] == [
        ("shorter-truncation", {"window": 24}, "display-only")
    ]


def test_silent_without_a_declared_window():
    """The sequence length is not a truncation: nothing to act on."""
    assert not _run(12.0, 200)[0]


def test_never_a_shorter_window_next_to_a_vanishing_gradient():
    gp402, findings = _run(12.0, 200, truncation=200, per_token=False)  # the last-step loss starves early steps
    assert not gp402
    assert {f.severity for f in findings if f.code == "GP101"} == {"warning"}
    gp402, findings = _run(12.0, 200, truncation=200, need=100)  # a declared need the horizon misses
    assert not gp402 and {f.severity for f in findings if f.code == "GP101"} == {"error"}


def test_never_for_bidirectional_layers():
    assert not _run(12.0, 200, truncation=200, bidirectional=True)[0]
    assert not _run(12.0, 200, truncation=200, layer="rnn.l0_reverse")[0]


def test_declared_truncation_shorter_than_the_horizon_is_info():
    (finding,), _ = _run(90.0, 20, truncation=20)
    assert finding.severity == "info" and "truncation 20 steps is short" in finding.message
    assert finding.fixes[0].action == "longer-truncation"
    (no_decay,), _ = _run(None, 20, truncation=20)
    assert "does not decay" in no_decay.message


def test_matched_window_is_fine():
    assert not _run(60.0, 100, truncation=100)[0]


def test_dated_from_the_first_probe_of_the_stretch_that_shows_it():
    """Probes at steps 0, 50, 100, 150: the horizon is 60 (fine for the window of 100) until step 50, then 12.
    The waste finding dates from step 100's stretch start, 50, not the run's first probe."""
    engine = RuleEngine({})
    layers = [{"name": "rnn", "bidirectional": False, "num_layers": 1}]
    engine.feed({"kind": "meta", "layers": layers, "settings": {"truncation": 100}})
    for step, horizon in ((0, 60.0), (50, 12.0), (100, 12.0), (150, 12.0)):
        engine.feed(_deep(step, horizon, 100))
    (finding,) = [f for f in engine.findings() if f.code == "GP402"]
    assert "gradients fade after 12" in finding.message
    assert (finding.first_step, finding.last_step) == (50, 150)
