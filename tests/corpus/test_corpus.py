"""The corpus of real training scripts, reduced: healthy runs raise no warning and learn; broken twins raise their code."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "benchmarks" / "corpus"
sys.path.insert(0, str(CORPUS))

from __init__ import SCRIPTS  # type: ignore[import-not-found]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"corpus_{name}", CORPUS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


CASES = [(name, variant) for name in SCRIPTS for variant in _load(name).VARIANTS]


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize(("name", "variant"), CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_verdict_on_a_real_training_script(name, variant):
    module = _load(name)
    result = module.main(variant, module.QUICK_STEPS)
    raised = [str(f) for f in result.raised]
    if result.expected is None:
        assert not raised, raised
        assert result.final_loss < 0.9 * result.initial_loss, (result.initial_loss, result.final_loss)
    else:
        assert result.expected in {f.code for f in result.raised}, [str(f) for f in result.findings]


def test_every_script_has_a_healthy_run_and_a_broken_twin():
    healthy = broken = 0
    for name in SCRIPTS:
        variants = _load(name).VARIANTS
        assert any(code is None for code in variants.values()) and any(code for code in variants.values()), name
        healthy += sum(code is None for code in variants.values())
        broken += sum(code is not None for code in variants.values())
    assert healthy >= 8 and broken >= 6


def test_optimizer_hooks_on_the_word_language_model_see_the_loop():
    """No probe.step and nothing declared: the window (35) and the clipping (0.25) are observed, steps counted."""
    module = _load("word_lm")
    result = module.main("lstm-hooks", module.QUICK_STEPS)
    assert result.steps == module.QUICK_STEPS == len(result.losses)
    assert result.truncation == module.WINDOW
    assert not [f for f in result.findings if f.code in ("GP401", "GP402")]


def test_optimizer_hooks_count_one_step_per_lbfgs_step():
    module = _load("timeseries_lbfgs")
    result = module.main("healthy-hooks", module.QUICK_STEPS)
    assert result.steps == module.QUICK_STEPS < len(result.losses)  # many closure calls per step
