"""The probe never breaks or changes training, and leaves nothing behind."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.events import iter_events
from gradprobe.recorders import propagation
from gradprobe.recorders.capture import CallCapture
from gradprobe.reference import from_torch

from .models import LoopModel


def _train(model, steps, probe=None, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        x = torch.randn(12, 4, 3)
        out = model(x)[0]
        loss = out.pow(2).mean()
        loss.backward()
        if probe is not None:
            probe.step(loss)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _boom(*args, **kwargs):
    raise ZeroDivisionError("injected")


@pytest.mark.parametrize(
    "target",
    [(CallCapture, "_record_stack"), (propagation, "jacobian_norms")],
    ids=["forward_hook", "deep_probe"],
)
def test_exception_inside_probe_is_reported_once_and_disables_it(target, monkeypatch, tmp_path):
    monkeypatch.setattr(*target, _boom)
    model = nn.LSTM(3, 6)
    log = tmp_path / "run.log"
    with pytest.warns(gradprobe.GradprobeWarning) as record, gradprobe.attach(model, log=log, every=1) as probe:
        losses = _train(model, 4, probe)
    assert len([w for w in record if issubclass(w.category, gradprobe.GradprobeWarning)]) == 1
    assert "ZeroDivisionError: injected" in str(record[0].message)
    assert probe.disabled and "injected" in probe.error
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)  # training went on
    assert not model._forward_hooks and not model._forward_pre_hooks
    errors = [e for e in iter_events(log) if e["kind"] == "error"]
    assert len(errors) == 1 and "injected" in errors[0]["message"]


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: nn.LSTM(3, 6, num_layers=2, dropout=0.3),
        lambda: nn.GRU(3, 6, bidirectional=True),
        lambda: LoopModel(nn.LSTMCell(3, 6), 6, lstm=True),
    ],
    ids=["lstm_dropout", "gru_bidirectional", "lstm_cell_loop"],
)
def test_training_is_bit_identical_with_the_probe_attached(make_model):
    torch.manual_seed(42)
    plain = make_model()
    probed = make_model()
    probed.load_state_dict(plain.state_dict())
    losses_plain = _train(plain, 6, seed=1)
    with gradprobe.attach(probed, every=2, saturation_every=1) as probe:
        losses_probed = _train(probed, 6, probe, seed=1)
    assert probe.error is None
    assert losses_plain == losses_probed
    for a, b in zip(plain.parameters(), probed.parameters()):
        assert torch.equal(a, b)
    # the global random stream is where it would be without the probe
    assert torch.equal(torch.get_rng_state(), _rng_after(make_model, plain))


def _rng_after(make_model, template):
    torch.manual_seed(42)
    make_model()
    model = make_model()
    model.load_state_dict(template.state_dict())
    _train(model, 6, seed=1)
    return torch.get_rng_state()


def test_replay_uses_the_dropout_masks_of_the_training_forward():
    torch.manual_seed(0)
    model = nn.LSTM(3, 6, num_layers=3, dropout=0.5, dtype=torch.float64)
    x = torch.randn(9, 4, 3, dtype=torch.float64)
    # expected: a reference twin under the same seed draws the same masks (see tests/reference)
    twin = from_torch(model)
    torch.manual_seed(7)
    out, _, trace = twin.trace(x)
    hs = [state[0] for state in trace.layers[1][0].states]
    expected = [float(g.norm()) for g in torch.autograd.grad(out.pow(2).sum(), hs)]

    seen = []
    probe = gradprobe.attach(model, every=1, sinks=[seen.append])
    torch.manual_seed(7)
    out, _ = model(x)
    out.pow(2).sum().backward()
    probe.step()
    probe.close()
    deep = {e["layer"]: e for e in seen if e["kind"] == "deep"}
    assert deep["LSTM.l1"]["grad_norms"] == pytest.approx(expected, rel=1e-9)


def test_close_removes_every_hook_and_reference():
    model = LoopModel(nn.GRUCell(3, 5), 5)
    probe = gradprobe.attach(model, every=1)
    assert model.cell._forward_hooks
    _train(model, 2, probe)
    probe.close()
    probe.close()  # idempotent
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    assert probe.model is None and probe.sites == []


def test_step_after_close_is_an_error():
    probe = gradprobe.attach(nn.RNN(2, 3))
    probe.close()
    with pytest.raises(RuntimeError, match="after close"):
        probe.step()


def test_sinks_receive_every_event_including_findings():
    seen = []
    model = nn.RNN(2, 8)
    with gradprobe.attach(model, every=1, config={}, sinks=[seen.append]) as probe:
        model(torch.randn(60, 2, 2))[0].sum().backward()
        probe.step()
    kinds = [e["kind"] for e in seen]
    assert kinds[0] == "meta" and {"step", "deep", "finding"} <= set(kinds)
    assert any(e["kind"] == "finding" and e["code"] == "GP101" for e in seen)
