import torch

from gradprobe.rules.engine import RuleEngine


def _run(norms, settings=None, fixes=(), growth_rate=None):
    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [], "settings": settings or {}})
    if growth_rate is not None:
        engine.feed({"kind": "deep", "step": 0, "layer": "rnn.l0", "mode": "RNN_TANH", "seq_len": 50,
                     "horizon": None, "rate": growth_rate})
    for step, norm in enumerate(norms):
        engine.feed({"kind": "step", "step": step, "grad_norm": norm, "nonfinite": None})
    for fix in fixes:
        engine.feed({"kind": "fix", **fix})
    return [f for f in engine.findings() if f.code == "GP401"]


SPIKY = [1.0 + 0.1 * (i % 4) for i in range(40)] + [40.0] + [1.0 + 0.1 * (i % 4) for i in range(20)]


def test_spikes_without_clipping_get_a_threshold():
    (finding,) = _run(SPIKY)
    assert finding.evidence["spikes"] == 1
    expected = 2 * torch.tensor(SPIKY).quantile(0.9).item()
    assert abs(finding.evidence["suggested_max_norm"] - expected) < 1e-6
    assert "no gradient clipping detected" in finding.message


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
