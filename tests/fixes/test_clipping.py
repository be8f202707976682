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


def test_a_diverging_loss_halves_the_limit_at_every_step_and_it_grows_back_after():
    """A multiplicative trust region on the applied norm, driven by the loss against its starting level."""
    clip = ClipGradNorm(brake=1.5, recovery=1.25)
    for _ in range(20):
        assert clip.decide(1.0, loss=1.0) is None  # start level 1.0, threshold 2x the median accepted norm
    limits = [clip.decide(1.0, loss=10.0)["max_norm"] for _ in range(3)]
    assert limits == pytest.approx([0.5, 0.25, 0.125])
    assert clip.decide(1.0, loss=10.0)["reason"] == "diverging loss"
    recovered = []
    while (action := clip.decide(1.0, loss=1.0)) is not None:
        recovered.append(action["max_norm"])
    assert recovered[:3] == pytest.approx([0.0625 * 1.25, 0.0625 * 1.25**2, 0.0625 * 1.25**3])
    assert len(recovered) == math.floor(math.log(1.0 / 0.0625) / math.log(1.25))  # clipped while 0.0625 * 1.25^k < 1
    assert clip.threshold() == pytest.approx(2.0)  # braked steps never entered the history


def test_braking_never_freezes_training():
    clip = ClipGradNorm()
    for _ in range(20):
        clip.decide(4.0, loss=1.0)
    limits = [clip.decide(4.0, loss=100.0)["max_norm"] for _ in range(40)]
    assert min(limits) == pytest.approx(0.01 * 4.0)  # the floor: 1% of the median accepted norm


def test_without_a_loss_there_is_no_brake_and_a_fixed_threshold_never_brakes():
    clip = ClipGradNorm()
    for _ in range(20):
        clip.decide(1.0)
    assert clip.decide(1.5) is None
    fixed = ClipGradNorm(max_norm=5.0)
    assert fixed.decide(1.0, loss=1.0) is None and fixed.decide(1.0, loss=1e6) is None


def test_the_first_steps_are_bounded_by_the_parameters_norm():
    """No history yet: a gradient 10^5 x the parameters' norm is clipped to it (a prior in the manner of AGC)."""
    clip = ClipGradNorm(relative=1.0, warmup=10)
    action = clip.decide(1e6, loss=5.0, param_norm=10.0)
    assert action["max_norm"] == 10.0 and action["reason"] == "first steps: over the parameters' norm"
    for _ in range(9):
        clip.decide(1.0, loss=5.0, param_norm=10.0)
    assert not clip.needs_parameter_norm()  # after the warmup only the history decides
    params = _params(torch.tensor([3.0, 4.0]))
    assert ClipGradNorm()(params, 5.0, loss=1.0) is None  # zero parameters: no scale to judge by
    params = [nn.Parameter(torch.tensor([3.0, 4.0]))]
    params[0].grad = torch.tensor([300.0, 400.0])
    ClipGradNorm()(params, 500.0, loss=1.0)
    assert _norm(params) == pytest.approx(5.0, rel=1e-5)  # the parameters' norm


def test_a_healthy_growing_norm_moves_the_threshold_up():
    """Norms growing 2% per step while the loss falls: clipped steps enter at their limit, so the threshold follows."""
    clip = ClipGradNorm()
    clipped = 0
    for k in range(300):
        clipped += clip.decide(1.02**k, loss=1.0 / (1 + k)) is not None
    assert clip.threshold() > 1.02**250
    assert clipped < 30


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
