import torch

from gradprobe.rules.engine import RuleEngine


def _run(norms, settings=None, fixes=(), growth_rate=None):
    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [], "settings": settings or {}})
    if growth_rate is not None:
        engine.feed(
            {
                "kind": "deep",
                "step": 0,
                "layer": "rnn.l0",
                "mode": "RNN_TANH",
                "seq_len": 50,
                "horizon": None,
                "rate": growth_rate,
            }
        )
    for step, norm in enumerate(norms):
        engine.feed({"kind": "step", "step": step, "grad_norm": norm, "nonfinite": None})
    for fix in fixes:
        engine.feed({"kind": "fix", **fix})
    return [f for f in engine.findings() if f.code == "GP401"]


CALM = [1.0 + 0.1 * (i % 4) for i in range(20)]
SPIKY = CALM * 2 + [40.0] + CALM + [50.0] + CALM + [45.0] + CALM  # three spikes, no loss recorded to excuse them


def test_spikes_without_clipping_get_a_threshold():
    (finding,) = _run(SPIKY)
    assert finding.evidence["spikes"] == 3 and finding.severity == "warning"
    expected = 2 * torch.tensor(SPIKY).median().item()
    assert abs(finding.evidence["suggested_max_norm"] - expected) < 0.11
    assert "no gradient clipping detected" in finding.message
    assert finding.fixes[0].action == "clip-grad-norm" and finding.fixes[0].safety == "safe"


def test_a_loop_that_declares_its_clipping_is_not_contradicted():
    assert not _run(SPIKY, settings={"grad_clip": 0.5})


def test_pinned_norms_reveal_clipping():
    """Growth through time (x1.2 per step) is the risk; clip_grad_norm_ ran before probe.step."""
    raw = (1 + 3 * torch.rand(60, generator=torch.Generator().manual_seed(0))).tolist()
    (finding,) = _run(raw, growth_rate=0.18)
    assert "signal growth" in finding.message and "rnn.l0" in finding.message
    assert not _run([min(n, 2.0) for n in raw], growth_rate=0.18)


def test_probe_clipping_and_auto_mode_count():
    assert not _run(SPIKY, fixes=[{"step": 40, "name": "clip-grad-norm", "applied": True}])
    assert not _run(SPIKY, settings={"fix": "auto"})
    assert _run(SPIKY, fixes=[{"step": 40, "name": "clip-grad-norm", "applied": False}])  # only recommended


def test_no_risk_no_finding():
    assert not _run([1.0] * 50)


def test_the_suggested_threshold_comes_from_the_healthy_first_steps():
    """A run that explodes from its first steps: norms x1.5 per step (to 1e10), the loss with them. The threshold
    suggested is twice the median norm of the steps before the loss rose, never a norm of the explosion."""
    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [], "settings": {}})
    for step in range(60):
        norm = 2.0 * 1.5**step
        loss = 1.0 if step < 5 else 2.0 ** (step - 4)
        engine.feed({"kind": "step", "step": step, "grad_norm": norm, "loss": loss, "nonfinite": None})
    (finding,) = [f for f in engine.findings() if f.code == "GP401"]
    healthy = [2.0 * 1.5**k for k in range(5)]  # the loss stays at its start level for 5 steps
    assert finding.evidence["suggested_max_norm"] == 2 * healthy[2]
    assert finding.evidence["suggested_max_norm"] < 1e3 < finding.evidence["median_norm"]


def test_the_risk_is_dated_from_the_first_spike_to_the_last_step():
    (finding,) = _run(SPIKY)
    assert SPIKY.index(40.0) == 40 and len(SPIKY) == 103
    assert (finding.first_step, finding.last_step) == (40, 102)
