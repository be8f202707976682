"""fix='recommend' only reports; fix='auto' applies the safe per-step fixes and logs each one."""

import torch
from torch import nn

import gradprobe
from gradprobe.events import iter_events


def _train(model, probe, steps=30, explode_at=25, nan_at=None):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for step in range(steps):
        out, _ = model(torch.randn(6, 2, 3))
        loss = out.pow(2).mean() * (1000.0 if step == explode_at else 1.0)
        loss.backward()
        if step == nan_at:
            next(model.parameters()).grad[0, 0] = float("nan")
        probe.step(loss)
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_auto_clips_a_spike_and_skips_a_nan_step(tmp_path):
    model = nn.GRU(3, 4)
    log = tmp_path / "run.log"
    with gradprobe.attach(model, log=log, every=100, fix="auto", config={}) as probe:
        params = _train(model, probe, nan_at=27)
    fixes = [e for e in iter_events(log) if e["kind"] == "fix"]
    names = [(e["step"], e["name"], e["applied"]) for e in fixes]
    assert (25, "clip-grad-norm", True) in names and (27, "nonfinite-guard", True) in names
    clip = next(e for e in fixes if e["name"] == "clip-grad-norm")
    assert clip["detail"]["norm"] > clip["detail"]["max_norm"]
    assert all(torch.isfinite(p).all() for p in params)
    assert not [f for f in probe.findings if f.code == "GP401"]  # clipping is in place


def test_recommend_changes_nothing_but_logs():
    plain_model = nn.GRU(3, 4)
    probed_model = nn.GRU(3, 4)
    probed_model.load_state_dict(plain_model.state_dict())
    with gradprobe.attach(plain_model, every=100, fix="off", config={}) as probe:
        expected = _train(plain_model, probe)
    seen = []
    with gradprobe.attach(probed_model, every=100, fix="recommend", config={}, sinks=[seen.append]) as probe:
        got = _train(probed_model, probe)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    fixes = [e for e in seen if e["kind"] == "fix"]
    assert fixes and all(not e["applied"] for e in fixes)


def _optimizer_hooks():
    from torch.optim import optimizer

    return len(optimizer._global_optimizer_pre_hooks)


def test_the_loss_brake_follows_the_optimizer_and_its_hook_goes_with_the_probe():
    """Braking a gradient brakes the step only for plain SGD; momentum and adaptive optimizers keep their steps."""
    hooks = _optimizer_hooks()
    expected = {"SGD": 1.5, "SGD-momentum": None, "Adam": None, "RMSprop": None}
    makers = {
        "SGD": lambda p: torch.optim.SGD(p, lr=0.1),
        "SGD-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        "Adam": lambda p: torch.optim.Adam(p, lr=1e-3),
        "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
    }
    for name, make in makers.items():
        model = nn.GRU(3, 4)
        other = nn.Linear(2, 2)
        with gradprobe.attach(model, every=100, fix="auto", config={}) as probe:
            torch.optim.Adam(other.parameters()).step()  # an optimizer of another model does not count
            assert probe._fixer.clip.brake == 1.5
            opt = make(model.parameters())
            out, _ = model(torch.randn(5, 2, 3))
            out.sum().backward()
            probe.step(out.sum())
            opt.step()
            assert probe._fixer.clip.brake == expected[name], name
            assert probe._fixer.optimizer == type(opt).__name__
        assert _optimizer_hooks() == hooks
