"""Never silent: whatever switches measuring or judging off, the verdict is "not measured", never "ok" (issue 27, item 1).

A failure is injected into each measuring path (the forward hooks, the deep
profile, sampled saturation, the step statistics, the optimizer hooks, the
schedule), into the rule engine, and into one rule on one layer. Every time
each layer it covered gets a GP001 warning with the real reason, and
``probe.findings``, ``Report.healthy``, ``assert_healthy``, the run log's
report (text, JSON) and ``gradprobe report``'s exit code all say so.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradprobe
from gradprobe.cli import main
from gradprobe.findings import failing, verdict
from gradprobe.quantities.deep_profile import DeepProfile
from gradprobe.quantities.saturation import SaturationSampling
from gradprobe.quantities.schedule import Schedule
from gradprobe.quantities.step_statistics import StepStatistics
from gradprobe.recorders.capture import CallCapture
from gradprobe.recorders.optimizer_loop import OptimizerLoop
from gradprobe.report import summarize_logs
from gradprobe.rules.engine import RuleEngine

STEPS = 12
LAYERS = {"gru", "cell"}


class TwoLayers(nn.Module):
    """A fused GRU under a hand-written LSTMCell loop: two attached layers of two kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 8)
        self.cell = nn.LSTMCell(8, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        h = c = torch.zeros(x.shape[1], 8)
        for t in range(x.shape[0]):
            h, c = self.cell(out[t], (h, c))
        return self.head(h)


def _raise(*args, **kwargs):
    raise RuntimeError("injected fault")


def _run(tmp_path, *, with_optimizer=False):
    torch.manual_seed(0)
    model = TwoLayers()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with gradprobe.attach(
            model,
            log=tmp_path / "run.log",
            every=4,
            saturation_every=3,
            config={},
            optimizer=opt if with_optimizer else None,
        ) as probe:
            for _ in range(STEPS):
                x, y = torch.randn(10, 6, 3), torch.randn(6, 1)
                loss = (model(x) - y).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                if not with_optimizer:
                    probe.step(loss)
                opt.step()
    return probe


def _report(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path / "run.log")])
    as_json = CliRunner().invoke(main, ["report", "--format", "json", str(tmp_path / "run.log")])
    return result, json.loads(as_json.output)


def test_the_healthy_run_reads_ok(tmp_path):
    """The control: without a fault the same run is measured and healthy, so each test below can fail."""
    probe = _run(tmp_path)
    assert probe.error is None and not [f for f in probe.findings if f.code == "GP001"]
    assert not failing(probe.findings), probe.findings
    result, data = _report(tmp_path)
    assert result.exit_code == 0 and "Verdict: ok" in result.output
    assert data["verdict"]["says"] == "ok"


MEASURING_PATHS = {
    "forward hooks": (CallCapture, "_record_cell"),
    "deep profile": (DeepProfile, "compute"),
    "sampled saturation": (SaturationSampling, "compute"),
    "step statistics": (StepStatistics, "compute"),
    "schedule": (Schedule, "observe"),
    "optimizer hooks": (OptimizerLoop, "_record"),
}


@pytest.mark.parametrize("path", list(MEASURING_PATHS))
def test_a_fault_in_a_measuring_path_reads_not_measured(tmp_path, monkeypatch, path):
    owner, method = MEASURING_PATHS[path]
    monkeypatch.setattr(owner, method, _raise)
    probe = _run(tmp_path, with_optimizer=path == "optimizer hooks")
    assert probe.disabled and "injected fault" in probe.error
    unmeasured = {f.layer: f for f in probe.findings if f.code == "GP001"}
    assert set(unmeasured) == LAYERS
    for finding in unmeasured.values():
        assert finding.severity == "warning" and "injected fault" in finding.message
        assert "switched itself off" in finding.evidence["reason"]
    assert verdict(probe.findings) in ("NOT MEASURED", "FAIL")

    summary = summarize_logs([tmp_path / "run.log"])
    assert {f.layer for f in summary.findings if f.code == "GP001"} == LAYERS
    assert summary.fails("error")  # whatever fail-on: unknown health never passes
    result, data = _report(tmp_path)
    assert result.exit_code == 1, result.output
    assert "Verdict: NOT MEASURED" in result.output or "Verdict: FAIL" in result.output
    assert data["verdict"]["failed"] is True and data["verdict"]["says"] != "ok"


def test_the_report_derives_not_measured_from_the_error_event_alone(tmp_path, monkeypatch):
    """The report judges the log anew: with the findings the probe wrote taken out, the ``error`` event suffices."""
    monkeypatch.setattr(DeepProfile, "compute", _raise)
    _run(tmp_path)
    log = tmp_path / "run.log"
    kept = [line for line in log.read_text().splitlines(keepends=True) if '"finding"' not in line]
    assert len(kept) < len(log.read_text().splitlines())
    log.write_text("".join(kept))
    result, data = _report(tmp_path)
    assert result.exit_code == 1 and "Verdict: NOT MEASURED" in result.output, result.output
    assert "injected fault" in result.output and data["verdict"]["says"] == "NOT MEASURED"


def test_rules_switched_off_read_not_measured(tmp_path, monkeypatch):
    real_feed = RuleEngine.feed

    def feed(self, event):
        if event.get("kind") == "deep":
            raise RuntimeError("injected fault in the engine")
        return real_feed(self, event)

    monkeypatch.setattr(RuleEngine, "feed", feed)
    probe = _run(tmp_path)
    assert probe.rules_error is not None and not probe.disabled  # measuring went on
    unmeasured = {f.layer: f for f in probe.findings if f.code == "GP001"}
    assert set(unmeasured) == LAYERS
    assert all("injected fault in the engine" in f.message for f in unmeasured.values())
    assert verdict(probe.findings) == "NOT MEASURED"


def test_a_rule_failing_on_one_layer_is_switched_off_for_that_layer_alone(monkeypatch):
    """GP202 raising on the cell goes on judging the GRU-free LSTM layers; the cell is reported not judged."""
    from gradprobe.rules import gp202_forget_gate_bias as gp202

    real = gp202._forget_bias

    def forget_bias(context, site, track, params):
        if site.name == "cell":
            raise KeyError("weight_hh")
        return real(context, site, track, params)

    monkeypatch.setattr(gp202, "_forget_bias", forget_bias)

    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 8)
            self.cell = nn.LSTMCell(8, 8)
            with torch.no_grad():
                self.lstm.bias_ih_l0[8:16] = -3.0  # a forget bias GP202 must still catch on this layer
                self.lstm.bias_hh_l0[8:16] = 0.0

    with pytest.warns(gradprobe.GradprobeWarning, match="for layer cell"):
        findings = gradprobe.lint(Both(), config={})
    by_code = {(f.code, f.layer): f for f in findings}
    assert by_code[("GP202", "lstm.l0")].severity == "error"
    gp001 = by_code[("GP001", "cell")]
    assert "gradprobe.rules.gp202_forget_gate_bias" in gp001.message and "KeyError" in gp001.message
    assert ("GP001", "lstm") not in by_code


def test_check_chains_the_measuring_error(monkeypatch):
    monkeypatch.setattr(DeepProfile, "compute", _raise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="gradprobe.check failed") as raised:
            gradprobe.check(nn.GRU(3, 4), torch.randn(5, 2, 3))
    assert isinstance(raised.value.__cause__, RuntimeError) and "injected fault" in str(raised.value.__cause__)


def test_a_plugin_whose_event_hook_raises_judges_nothing_and_leaves_the_run_measured(tmp_path, monkeypatch):
    """Only rules judge: a broken logging hook is a fault of its own, not a layer left unjudged."""
    from gradprobe import plugins

    class EventHookRaises:
        @gradprobe.hookspecs.hookimpl
        def gradprobe_event_written(self, event):
            raise RuntimeError("event hook exploded")

    real = plugins.make_plugin_manager

    def make(*args, **kwargs):
        pm = real(*args, **kwargs)
        pm.add(EventHookRaises(), "broken-logger", "test")
        return pm

    from gradprobe.rules import engine

    monkeypatch.setattr(engine, "default_plugin_manager", lambda: make())
    probe = _run(tmp_path)
    assert probe.rules.pm.statuses["broken-logger"].status == "failed"  # it raised and was switched off
    assert not [f for f in probe.findings if f.code == "GP001"]
    assert not failing(probe.findings)
