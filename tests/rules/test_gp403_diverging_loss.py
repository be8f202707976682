"""GP403 diverging-loss: every level is a median, so no single batch decides (issue 27, item 4)."""

from __future__ import annotations

import math
import random

import pytest

from gradprobe.rules.engine import RuleEngine

SEEDS = (0, 7, 123)


def _judge(losses):
    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [], "settings": {}})
    for step, loss in enumerate(losses):
        engine.feed({"kind": "step", "step": step, "loss": loss, "grad_norm": 1.0})
    return [f for f in engine.findings() if f.code == "GP403"]


def _noisy(level, steps, rng, spread=0.6):
    """Heavy-tailed batch losses around ``level(step)``: a regression on small batches."""
    return [level(t) * math.exp(rng.gauss(0.0, spread)) for t in range(steps)]


@pytest.mark.parametrize("seed", range(100))
def test_a_noisy_flat_loss_is_not_diverging(seed):
    assert not _judge(_noisy(lambda t: 8.0, 60, random.Random(seed)))


@pytest.mark.parametrize("seed", SEEDS)
def test_one_low_first_batch_moves_nothing(seed):
    rng = random.Random(seed)
    losses = [0.05, *_noisy(lambda t: 2.0 * 0.995**t, 59, rng, spread=0.2)]
    assert not _judge(losses)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_loss_that_climbs_after_learning_is_diverging(seed):
    rng = random.Random(seed)
    level = lambda t: 2.0 * 0.97**t if t < 40 else 2.0 * 0.97**40 * 1.06 ** (t - 40)
    (finding,) = _judge(_noisy(level, 90, rng, spread=0.2))
    assert finding.evidence["latest_loss"] > 3 * finding.evidence["best_loss"]
    assert 20 <= finding.step <= 60


@pytest.mark.parametrize("seed", SEEDS)
def test_a_run_that_blows_up_from_its_first_steps_is_diverging(seed):
    rng = random.Random(seed)
    losses = _noisy(lambda t: min(1.5**t, 1e4), 50, rng, spread=0.2)
    (finding,) = _judge(losses)
    assert finding.severity == "error" and finding.step == 0


@pytest.mark.parametrize("fix", ["off", "auto"])
def test_under_fix_auto_the_fix_does_not_recommend_itself(fix):
    """With fix="auto" the probe clips and guards already: GP403 recommends what it cannot do (a lower
    learning rate), not attach(..., fix='auto') again."""
    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [], "settings": {"fix": fix}})
    level = lambda t: 2.0 * 0.97**t if t < 40 else 2.0 * 0.97**40 * 1.06 ** (t - 40)
    for step, loss in enumerate(_noisy(level, 90, random.Random(0), spread=0.2)):
        engine.feed({"kind": "step", "step": step, "loss": loss, "grad_norm": 1.0})
    (finding,) = [f for f in engine.findings() if f.code == "GP403"]
    actions = [f.action for f in finding.fixes]
    assert "lower-learning-rate" in actions
    assert ("clip-grad-norm-auto" in actions) == (fix == "off")
    assert ("fix='auto'" in (finding.fix or "")) == (fix == "off")
