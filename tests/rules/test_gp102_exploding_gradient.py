import pytest
import torch

import gradprobe
from gradprobe.rules.engine import RuleEngine

from ..models import LinearCell, LoopModel, orthogonal


def test_growing_profile_is_an_error():
    """Linear RNN with W = 1.3 Q: the signal grows x1.3 per step, x1.3^39 over 40 steps."""
    torch.manual_seed(0)
    cell = LinearCell(2, 16, 1.3 * orthogonal(16))
    report = gradprobe.check(LoopModel(cell, 16), torch.randn(40, 4, 2, dtype=torch.float64), cells=[cell], config={})
    (finding,) = [f for f in report.findings if f.code == "GP102"]
    assert finding.severity == "error" and finding.layer == "cell"
    assert finding.evidence["growth"] == pytest_approx(1.3**39)
    assert "grows x1.30 per step" in finding.message


def pytest_approx(value, rel=1e-6):
    import pytest

    return pytest.approx(value, rel=rel)


def _steps(engine, norms):
    found = []
    engine.feed({"kind": "meta", "layers": [], "settings": {}})
    for step, norm in enumerate(norms):
        found += engine.feed({"kind": "step", "step": step, "grad_norm": norm, "nonfinite": None})
    return found


def _spikes(norms, losses=None, settings=None):
    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [], "settings": settings or {}})
    for step, norm in enumerate(norms):
        loss = None if losses is None else losses[step]
        engine.feed({"kind": "step", "step": step, "grad_norm": norm, "loss": loss, "nonfinite": None})
    return [f for f in engine.findings() if f.code == "GP102"]


NORMS = [1.0 + 0.01 * (i % 5) for i in range(30)] + [25.0] + [1.0] * 20 + [30.0] + [1.0] * 20 + [40.0] + [1.0] * 30


def test_spikes_while_the_loss_improves_are_information():
    falling = [2.0 / (1 + i / 10) for i in range(len(NORMS))]
    (spike,) = _spikes(NORMS, falling)
    assert spike.step == 30 and spike.severity == "info" and spike.evidence["spikes"] == 3
    assert (
        "3 gradient-norm spikes over 10x the running median (up to 40x, first at step 30) while the loss keeps improving"
        in spike.message
    )


def test_spikes_with_a_diverging_loss_are_an_error():
    rising = [1.0 + i / 20 for i in range(len(NORMS))]
    (spike,) = _spikes(NORMS, rising)
    assert spike.severity == "error" and "the loss diverges" in spike.message


def test_repeated_spikes_without_a_loss_are_a_warning_and_one_extreme_spike_too():
    assert _spikes(NORMS)[0].severity == "error"  # repeated, harmful: nothing shows they are harmless
    extreme = [1.0] * 20 + [5000.0] + [1.0] * 40
    (spike,) = _spikes(extreme, [1.0 / (1 + i) for i in range(61)])
    assert spike.severity == "warning" and "over 1000x the median" in spike.message


def test_spikes_under_declared_clipping_are_information():
    rising = [1.0 + i / 20 for i in range(len(NORMS))]
    (spike,) = _spikes(NORMS, rising, settings={"grad_clip": 1.0})
    assert spike.severity == "info" and "bounded by clipping (declared)" in spike.message


def test_no_spike_below_factor_or_before_history():
    engine = RuleEngine({})
    assert not _steps(engine, [1.0, 50.0] + [1.0 + 0.5 * (i % 3) for i in range(40)])  # early jump: no history yet
    engine = RuleEngine({"signals": {"spike_factor": 30.0}})
    assert not _steps(engine, [1.0] * 20 + [25.0])
    engine = RuleEngine({})
    _steps(engine, [1.0] * 20 + [25.0])
    assert engine.context.run.norms.spikes == 1  # the default factor 10 calls it a spike


def test_the_old_spike_threshold_still_works_and_warns():
    with pytest.warns(DeprecationWarning, match=r"GP102.spike_factor is deprecated, use signals.spike_factor"):
        engine = RuleEngine({}, thresholds={"GP102": {"spike_factor": 30.0}})
    assert engine.config.signals == {"spike_factor": 30.0} and "GP102" not in engine.config.thresholds
    _steps(engine, [1.0] * 20 + [25.0])
    assert engine.context.run.norms.spikes == 0
