from __future__ import annotations

import math
import sys

import gradprobe_tensorboard
import pytest
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
        self.histograms: list[tuple[str, list[float], int]] = []
        self.flushes = 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))

    def add_histogram(self, tag, values, step):
        self.histograms.append((tag, list(values), step))

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
    with gradprobe.attach(
        model, every=2, config={}, sinks=[gradprobe_tensorboard.TensorBoardSink(writer=writer)]
    ) as probe:
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
    folder, sink = gradprobe_tensorboard._shared
    assert folder == str(tmp_path)
    assert any(tag == "gradprobe/loss" for tag, _, _ in sink.writer.scalars)


def test_the_shared_sink_is_closed_when_the_folder_changes_and_at_exit(monkeypatch, tmp_path):
    closed = []

    class ClosingWriter(FakeWriter):
        def close(self):
            closed.append(self)

    real_sink = gradprobe_tensorboard.TensorBoardSink
    monkeypatch.setattr(gradprobe_tensorboard, "TensorBoardSink", lambda folder: real_sink(writer=ClosingWriter()))
    monkeypatch.setattr(gradprobe_tensorboard, "_shared", None)
    monkeypatch.setenv(gradprobe_tensorboard.ENV, str(tmp_path / "a"))
    gradprobe_tensorboard.gradprobe_event_written({"kind": "step", "step": 0, "loss": 1.0})
    first = gradprobe_tensorboard._shared[1].writer
    monkeypatch.setenv(gradprobe_tensorboard.ENV, str(tmp_path / "b"))
    gradprobe_tensorboard.gradprobe_event_written({"kind": "step", "step": 1, "loss": 1.0})
    assert closed == [first] and gradprobe_tensorboard._shared[0] == str(tmp_path / "b")
    second = gradprobe_tensorboard._shared[1].writer
    gradprobe_tensorboard._close_shared()  # what runs at exit (atexit)
    assert closed == [first, second] and gradprobe_tensorboard._shared is None


def test_hook_is_silent_without_the_variable(monkeypatch):
    monkeypatch.delenv(gradprobe_tensorboard.ENV, raising=False)
    monkeypatch.setattr(gradprobe_tensorboard, "_shared", None)
    gradprobe_tensorboard.gradprobe_event_written({"kind": "step", "step": 0, "loss": 1.0})
    assert gradprobe_tensorboard._shared is None


def test_gate_norms_and_deep_profiles_as_histograms():
    torch.manual_seed(0)
    writer = FakeWriter()
    model = nn.LSTM(2, 8)
    events: list[dict] = []
    sink = gradprobe_tensorboard.TensorBoardSink(writer=writer)
    with gradprobe.attach(model, every=2, config={}, sinks=[sink, events.append]) as probe:
        _train(probe, model)
    gates = [
        (tag, value, step) for tag, value, step in writer.scalars if tag.startswith("gradprobe/gates/weight_hh_l0/")
    ]
    assert {tag.rsplit("/", 1)[1] for tag, _, _ in gates} == {"input", "forget", "cell", "output"}
    first_step = next(e for e in events if e["kind"] == "step")
    assert {t.rsplit("/", 1)[1]: v for t, v, s in gates if s == 0} == first_step["gates"]["weight_hh_l0"]
    profiles = [(values, step) for tag, values, step in writer.histograms if tag == "gradprobe/LSTM.l0/profile_log10"]
    deep = [e for e in events if e["kind"] == "deep"]
    assert [step for _, step in profiles] == [e["step"] for e in deep] == [0, 2]
    expected = [math.log10(v) for v in deep[0]["profile"] if v > 0]
    assert profiles[0][0] == pytest.approx(expected)


def test_without_tensorboard_one_warning_and_training_goes_on(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if it were not installed
    with pytest.warns(gradprobe.GradprobeWarning, match="writes nothing") as caught:
        sink = gradprobe_tensorboard.TensorBoardSink("runs/never")
    assert len(caught) == 1 and sink.writer is None
    model = nn.GRU(2, 4)
    with gradprobe.attach(model, every=1, config={}, sinks=[sink]) as probe:
        _train(probe, model, steps=2)
    assert probe.step_index == 2 and not probe.faults


def test_a_real_summary_writer_holds_the_scalars_and_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = nn.GRU(2, 4)
    sink = gradprobe_tensorboard.TensorBoardSink(str(tmp_path))
    with gradprobe.attach(model, every=2, config={}, sinks=[sink]) as probe:
        _train(probe, model)
    sink.writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "scalars": 0}).Reload()
    assert [s.step for s in events.Scalars("gradprobe/loss")] == [0, 1, 2]
    assert [h.step for h in events.Histograms("gradprobe/GRU.l0/profile_log10")] == [0, 2]
    assert "gradprobe/gates/weight_hh_l0/reset" in events.Tags()["scalars"]
