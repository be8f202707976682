from __future__ import annotations

import gradprobe_tensorboard
import torch
from torch import nn

import gradprobe
from gradprobe.plugins import make_plugin_manager
from gradprobe.probe import Probe, ProbeSettings
from gradprobe.rules.engine import RuleEngine


class FakeWriter:
    def __init__(self, *args, **kwargs):
        self.scalars: list[tuple[str, float, int]] = []
        self.texts: list[tuple[str, str, int]] = []
        self.flushes = 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))

    def flush(self):
        self.flushes += 1


def _train(probe, model, steps=3):
    for _ in range(steps):
        out, _ = model(torch.randn(30, 2, 2))
        loss = out.pow(2).mean()
        loss.backward()
        probe.step(loss)
        model.zero_grad()


def test_sink_writes_training_and_deep_scalars():
    torch.manual_seed(0)
    writer = FakeWriter()
    model = nn.RNN(2, 8)
    with gradprobe.attach(model, every=2, config={}, sinks=[gradprobe_tensorboard.TensorBoardSink(writer=writer)]) as probe:
        _train(probe, model)
    tags = {tag for tag, _, _ in writer.scalars}
    assert {"gradprobe/loss", "gradprobe/grad_norm", "gradprobe/grad_norm/weight_hh_l0"} <= tags
    assert {"gradprobe/RNN.l0/decay_per_step", "gradprobe/RNN.l0/jacobian_norm_mean"} <= tags
    losses = [(value, step) for tag, value, step in writer.scalars if tag == "gradprobe/loss"]
    assert [step for _, step in losses] == [0, 1, 2]
    assert any("GP101" in text for _, text, _ in writer.texts)  # T=30 is beyond a default RNN's horizon
    assert writer.flushes >= 2


def test_entry_point_hook_writes_when_the_variable_is_set(monkeypatch, tmp_path):
    made = []
    real_sink = gradprobe_tensorboard.TensorBoardSink

    def fake_sink(folder):
        made.append(folder)
        return real_sink(writer=FakeWriter())

    monkeypatch.setenv(gradprobe_tensorboard.ENV, str(tmp_path))
    monkeypatch.setattr(gradprobe_tensorboard, "TensorBoardSink", fake_sink)
    monkeypatch.setattr(gradprobe_tensorboard, "_shared", None)
    pm = make_plugin_manager()  # loads the installed entry point
    assert pm.get_plugin("tensorboard") is gradprobe_tensorboard
    model = nn.GRU(2, 4)
    with Probe(model, settings=ProbeSettings(every=1), rules=RuleEngine({}, plugin_manager=pm)) as probe:
        _train(probe, model, steps=1)
    assert made == [str(tmp_path)]
    assert any(tag == "gradprobe/loss" for tag, _, _ in gradprobe_tensorboard._shared.writer.scalars)


def test_hook_is_silent_without_the_variable(monkeypatch):
    monkeypatch.delenv(gradprobe_tensorboard.ENV, raising=False)
    monkeypatch.setattr(gradprobe_tensorboard, "_shared", None)
    gradprobe_tensorboard.gradprobe_event_written({"kind": "step", "step": 0, "loss": 1.0})
    assert gradprobe_tensorboard._shared is None
