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


def test_spike_against_running_median():
    engine = RuleEngine({})
    found = _steps(engine, [1.0 + 0.01 * (i % 5) for i in range(30)] + [25.0, 1.0])
    (spike,) = [f for f in found if f.code == "GP102"]
    assert spike.step == 30 and spike.severity == "warning"
    assert spike.evidence["ratio"] > 20
    assert "25 at step 30 is 25x the running median" in spike.message


def test_no_spike_below_factor_or_before_history():
    engine = RuleEngine({})
    assert not _steps(engine, [1.0, 50.0] + [1.0 + 0.5 * (i % 3) for i in range(40)])  # early jump: no history yet
    engine = RuleEngine({}, thresholds={"GP102": {"spike_factor": 30.0}})
    assert not _steps(engine, [1.0] * 20 + [25.0])

