import math

import pytest
import torch
from torch import nn

from gradprobe.fixes import AdaptiveClip, ClipGradNorm, ClipGradValue
from gradprobe.fixes.clipping import quantile


def _params(*grads):
    params = []
    for g in grads:
        p = nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        params.append(p)
    return params


def _norm(params):
    return float(torch.cat([p.grad.flatten() for p in params]).norm())


def test_clip_by_norm_rescales_to_the_threshold():
    params = _params(torch.full((3,), 4.0), torch.full((4,), 3.0))
    action = ClipGradNorm(max_norm=2.0)(params, _norm(params))
    assert _norm(params) == pytest.approx(2.0, rel=1e-5)
    assert action["max_norm"] == 2.0 and action["norm"] == pytest.approx(float(torch.tensor(48.0 + 36.0).sqrt()))
    assert ClipGradNorm(max_norm=100.0)(params, _norm(params)) is None


def test_learned_threshold_is_a_robust_z_score_of_accepted_norms():
    """exp(median + z * 1.4826 * MAD) of the log-norms, capped at ceiling x the median."""
    clip = ClipGradNorm(warmup=10, z=3.0, ceiling=10.0)
    norms = [1.0 + 0.1 * k for k in range(10)]
    for n in norms:
        assert clip(_params(torch.tensor([n])), n) is None
    logs = sorted(math.log(n) for n in norms)
    median = (logs[4] + logs[5]) / 2
    mad = sorted(abs(v - median) for v in logs)[5]
    assert clip.threshold() == pytest.approx(math.exp(median + 3.0 * 1.4826 * mad))
    params = _params(torch.tensor([100.0]))
    assert clip(params, 100.0) is not None and _norm(params) == pytest.approx(clip.threshold(), rel=1e-5)


def test_an_explosion_cannot_teach_the_threshold():
    """Norms growing x3 per step from the first step: clipped norms never enter the history, so the threshold stays."""
    clip = ClipGradNorm()
    thresholds = []
    for k in range(60):
        norm = 3.0**k
        clip.decide(norm)
        thresholds.append(clip.threshold())
    assert max(thresholds) <= 10 * 3.0**3  # the cap: 10x the median of the few norms accepted before it bit
    assert thresholds[-1] == thresholds[20]  # a run of clipped steps leaves it where it was


def test_fixed_threshold_is_kept():
    clip = ClipGradNorm(max_norm=2.0)
    for n in (1.0, 50.0, 1e9):
        clip.decide(n)
    assert clip.threshold() == 2.0


def test_clip_by_value():
    params = _params(torch.tensor([-5.0, 0.5, 7.0]))
    assert ClipGradValue(1.0)(params, 0.0) == {"clip_value": 1.0, "entries": 2}
    assert params[0].grad.tolist() == [-1.0, 0.5, 1.0]


def test_adaptive_clip_uses_the_percentile_of_history():
    clip = AdaptiveClip(percentile=50, min_history=5)
    for n in [1.0, 2.0, 3.0, 4.0]:
        assert clip(_params(torch.tensor([n])), n) is None
    params = _params(torch.tensor([10.0]))
    action = clip(params, 10.0)
    assert action["max_norm"] == pytest.approx(3.0)  # median of [1, 2, 3, 4, 10]
    assert _norm(params) == pytest.approx(3.0, rel=1e-5)


def test_quantile_ignores_non_finite():
    assert quantile([1.0, float("nan"), 3.0, float("inf")], 0.5) == 2.0
