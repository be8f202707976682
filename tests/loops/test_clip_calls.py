"""``clip_grad_norm_`` served from the probe's backward norms: the training is bit for bit the same, the clipping
is still detected, and the optimizer-time comparison reads no gradient again."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.recorders import clip_calls, optimizer_loop

pytestmark = pytest.mark.skipif(not clip_calls.SUPPORTED, reason="torch < 2.6 has no clip_grads_with_norm_")

TORCH_CLIP = torch.nn.utils.clip_grad_norm_


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.rnn = nn.LSTM(16, 32, num_layers=2)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(x))[0])


def _train(model, steps, max_norm, probe_kwargs=None, between=None, tmp_path=None):
    """Train ``model`` with clipping; with ``probe_kwargs``, under ``attach(model, optimizer=opt, ...)``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(1)
    batches = [(torch.randn(20, 4, 8, generator=data), torch.randn(20, 4, 3, generator=data)) for _ in range(steps)]
    probe = None
    if probe_kwargs is not None:
        probe = gradprobe.attach(model, optimizer=opt, config={}, **probe_kwargs)
    returned = []
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if between is not None:
            between(model)
        returned.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        opt.step()
    if probe is not None:
        probe.close()
    return returned


@pytest.mark.parametrize("max_norm", [0.05, 1e3], ids=["clipping", "threshold never reached"])
@pytest.mark.parametrize("seed", [0, 3])
def test_training_is_bit_for_bit_the_same_and_no_gradient_is_read_again(tmp_path, monkeypatch, max_norm, seed):
    torch.manual_seed(seed)
    probed, plain = Tagger(), Tagger()
    plain.load_state_dict(probed.state_dict())
    second_passes = []
    original = optimizer_loop._norms_by_name
    monkeypatch.setattr(optimizer_loop, "_norms_by_name", lambda *a: second_passes.append(1) or original(*a))
    log = tmp_path / "run.log"
    ours = _train(probed, 12, max_norm, {"log": log, "every": 50})
    theirs = _train(plain, 12, max_norm)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))  # what clip_grad_norm_ returns
    assert all(torch.equal(p, q) for p, q in zip(probed.parameters(), plain.parameters()))
    assert not second_passes
    assert torch.nn.utils.clip_grad_norm_ is TORCH_CLIP and torch.nn.utils.clip_grad.clip_grad_norm_ is TORCH_CLIP
    steps = [e for e in map(json.loads, log.read_text().splitlines()) if e.get("kind") == "step"]
    assert len(steps) == 12
    for step, total in zip(steps, theirs):
        clip = step.get("clip")
        assert step["grad_norm"] == pytest.approx(float(total), rel=1e-5)  # the norm before clipping
        if float(total) > max_norm:
            assert clip["kind"] == "norm" and clip["threshold"] == pytest.approx(max_norm, rel=1e-4)
        else:
            assert clip is None


def test_gradients_changed_in_place_without_a_version_bump_are_not_served():
    """AMP's unscaling kernel changes the gradients in place and leaves their version counters: the re-read small
    gradient tells, and torch computes the norm of the unscaled gradients."""

    def unscale(model):
        grads = [p.grad for p in model.parameters()]
        torch._amp_foreach_non_finite_check_and_unscale_(grads, torch.zeros(1), torch.full((1,), 0.5))

    torch.manual_seed(0)
    probed, plain = Tagger(), Tagger()
    plain.load_state_dict(probed.state_dict())
    ours = _train(probed, 6, 0.05, {}, between=unscale)
    theirs = _train(plain, 6, 0.05, between=unscale)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert all(torch.equal(p, q) for p, q in zip(probed.parameters(), plain.parameters()))


def _twin_params(params):
    """Parameters holding copies of ``params``' gradients, for torch's own function."""
    twins = []
    for param in params:
        twin = nn.Parameter(param.detach().clone())
        twin.grad = param.grad.clone()
        twins.append(twin)
    return twins


def test_a_total_that_does_not_match_torchs_is_never_served(monkeypatch):
    """The first served call of each device and dtype is checked against torch's own total."""

    class Wrong:
        def known_norms(self, params):
            return [torch.linalg.vector_norm(p.grad) * 2 for p in params if p.grad is not None]

        def clipped(self, params, max_norm, served):
            seen.append(served)

    seen: list[bool] = []
    monkeypatch.setattr(clip_calls, "_checked", {})
    subscription = clip_calls.listen(Wrong())
    try:
        torch.manual_seed(0)
        model = Tagger()
        nn.functional.mse_loss(model(torch.randn(5, 2, 8)), torch.zeros(5, 2, 3)).backward()
        for _ in range(2):
            twins = _twin_params(model.parameters())
            expected = TORCH_CLIP(twins, 0.01)
            assert torch.equal(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01), expected)
            assert all(torch.equal(p.grad, t.grad) for p, t in zip(model.parameters(), twins))
        assert seen == [False, False]
    finally:
        subscription.remove()
    assert torch.nn.utils.clip_grad_norm_ is TORCH_CLIP


def test_calls_it_cannot_serve_go_to_torch_unchanged(tmp_path):
    """Another norm type, error_if_nonfinite, or parameters the probe does not watch: torch's function, and the
    probe still finds the clipping from the gradients."""
    torch.manual_seed(0)
    model, other = Tagger(), nn.Linear(3, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    log = tmp_path / "run.log"
    with gradprobe.attach(model, optimizer=opt, log=log, config={}):
        for kwargs in ({"norm_type": 1.0}, {"error_if_nonfinite": True}, {}):
            opt.zero_grad()
            nn.functional.mse_loss(model(torch.randn(20, 4, 8)), torch.randn(20, 4, 3)).backward()
            other.weight.grad = torch.ones(3, 3)
            params = list(model.parameters()) + ([other.weight] if not kwargs else [])
            twins = _twin_params(params)
            expected = TORCH_CLIP(twins, 0.01, **kwargs)
            assert torch.equal(torch.nn.utils.clip_grad_norm_(params, 0.01, **kwargs), expected)
            assert all(torch.equal(p.grad, t.grad) for p, t in zip(params, twins))
            opt.step()
    steps = [e for e in map(json.loads, log.read_text().splitlines()) if e.get("kind") == "step"]
    assert len(steps) == 3 and all(step["clip"] is not None for step in steps)
