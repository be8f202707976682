"""Fault injection: whatever fails inside gradprobe, training goes on unchanged.

For each fault: the losses equal those of an unprobed run, at most one
GradprobeWarning is issued, the run log stays readable and the findings stay
available. (Issue 10, faults 1-12.)
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe import courier, plugins
from gradprobe.events import EventWriter, iter_events
from gradprobe.rules.registry import Registry

STEPS = 30


def _train(model, probe=None, steps=STEPS):
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        out, _ = model(torch.randn(8, 4, 3))
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if probe is not None:
            probe.step(loss)
        opt.step()
        losses.append(loss.item())
    return losses


def _model():
    torch.manual_seed(0)
    return nn.GRU(3, 6)


REFERENCE = _train(_model())


def _probed_run(tmp_path, **attach):
    """Train under the probe; return the probe, the losses and the GradprobeWarnings."""
    model = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with gradprobe.attach(model, log=tmp_path / "run.log", every=10, config={}, **attach) as probe:
            losses = _train(model, probe)
    ours = [w for w in caught if issubclass(w.category, gradprobe.GradprobeWarning)]
    assert not model._forward_hooks and not model._forward_pre_hooks
    return probe, losses, ours


def _steps_logged(tmp_path):
    return sum(1 for e in iter_events(tmp_path / "run.log") if e["kind"] == "step")


@pytest.fixture
def installed(monkeypatch):
    """Pretend extra plugins are installed (entry points of the ``gradprobe`` group)."""

    def install(**named: str) -> None:
        real = list(metadata.entry_points(group=plugins.ENTRY_POINT_GROUP))
        fake = [metadata.EntryPoint(name=n, value=v, group=plugins.ENTRY_POINT_GROUP) for n, v in named.items()]
        monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: real + fake)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    yield install
    sys.path.remove(str(Path(__file__).resolve().parents[1]))


def test_1_a_sink_that_raises_on_the_first_event(tmp_path):
    def sink(event):
        raise ValueError("sink broken")

    probe, losses, ours = _probed_run(tmp_path, sinks=[sink])
    assert losses == REFERENCE and len(ours) == 1 and "sink test_1" in str(ours[0].message)
    assert _steps_logged(tmp_path) == STEPS and isinstance(probe.findings, list)
    assert "sink" in next(iter(probe.faults)) and not probe.disabled


def test_2_a_rule_plugin_whose_lint_raises(tmp_path, installed):
    installed(broken="tests.fault_plugins:LINT_RAISES")
    probe, losses, ours = _probed_run(tmp_path)
    assert losses == REFERENCE and len(ours) == 1 and "'broken'" in str(ours[0].message)
    assert "lint exploded" in str(ours[0].message)
    assert _steps_logged(tmp_path) == STEPS and not probe.disabled
    assert not [f for f in probe.findings if f.code == "XP001"]


def test_3_a_rule_plugin_whose_summarize_raises(tmp_path, installed):
    installed(broken="tests.fault_plugins:SUMMARIZE_RAISES")
    probe, losses, ours = _probed_run(tmp_path)
    assert losses == REFERENCE and len(ours) == 1 and "summarize exploded" in str(ours[0].message)
    findings = probe.findings  # never raises
    written = [e for e in iter_events(tmp_path / "run.log") if e["kind"] == "finding"]
    assert {f.code for f in findings} == {e["code"] for e in written}  # the other rules' findings were written


def test_3b_a_generator_hook_that_raises_while_consumed(tmp_path, installed):
    installed(broken="tests.fault_plugins:OBSERVE_RAISES")
    _probe, losses, ours = _probed_run(tmp_path)
    assert losses == REFERENCE and len(ours) == 1 and "observe exploded" in str(ours[0].message)
    assert _steps_logged(tmp_path) == STEPS


def test_3c_an_event_hook_that_raises(tmp_path, installed):
    installed(broken="tests.fault_plugins:EVENT_HOOK_RAISES")
    _probe, losses, ours = _probed_run(tmp_path)
    assert losses == REFERENCE and len(ours) == 1 and "event hook exploded" in str(ours[0].message)
    assert _steps_logged(tmp_path) == STEPS


def test_4_a_sink_that_raises_mid_run_keeps_the_log_whole(tmp_path):
    seen = []

    def sink(event):
        if event["kind"] == "step" and event["step"] == 11:
            raise OSError("remote store went away")
        seen.append(event)

    _probe, losses, ours = _probed_run(tmp_path, sinks=[sink])
    assert losses == REFERENCE and len(ours) == 1
    assert _steps_logged(tmp_path) == STEPS  # not 11 of 30
    faults = [e for e in iter_events(tmp_path / "run.log") if e["kind"] == "fault"]
    assert len(faults) == 1 and "remote store went away" in faults[0]["message"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("no_such_module_anywhere:plugin", "import failed: ModuleNotFoundError"),
        ("tests.fault_plugins:DUPLICATE_CODE", "GP101"),
    ],
    ids=["import-error", "duplicate-code"],
)
def test_5_a_broken_installed_plugin_is_skipped_with_one_line(tmp_path, installed, value, expected):
    installed(broken=value)
    _probe, losses, ours = _probed_run(tmp_path)
    assert losses == REFERENCE and len(ours) == 1, [str(w.message) for w in ours]
    message = str(ours[0].message)
    assert "'broken'" in message and expected in message and "\n" not in message
    with pytest.warns(gradprobe.GradprobeWarning):
        pm = plugins.make_plugin_manager()
        Registry.from_plugins(pm)
    assert pm.statuses["broken"].status == "failed" and expected in pm.statuses["broken"].reason


def test_5b_plugins_can_be_switched_off_by_name(tmp_path, installed, monkeypatch):
    installed(broken="tests.fault_plugins:LINT_RAISES")
    monkeypatch.setenv(plugins.DISABLE_ENV, "broken, gradprobe.rules.gp101_vanishing_gradient")
    probe, losses, ours = _probed_run(tmp_path)
    assert losses == REFERENCE and not ours, [str(w.message) for w in ours]
    statuses = plugins.make_plugin_manager().statuses
    assert (
        statuses["broken"].status == "disabled"
        and statuses["gradprobe.rules.gp101_vanishing_gradient"].status == "disabled"
    )
    assert "GP101" not in {f.code for f in probe.findings}


def test_6_tensorboard_dir_set_without_tensorboard(tmp_path, monkeypatch):
    if "tensorboard" not in {e.name for e in metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)}:
        pytest.skip("the gradprobe-tensorboard plugin is not installed")
    import gradprobe_tensorboard

    monkeypatch.setattr(gradprobe_tensorboard, "_shared", None)  # one sink (and one warning) per process
    monkeypatch.setenv("GRADPROBE_TENSORBOARD_DIR", str(tmp_path / "tb"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if tensorboard were missing
    _probe, losses, ours = _probed_run(tmp_path)
    assert losses == REFERENCE and len(ours) == 1 and "'tensorboard'" in str(ours[0].message)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        report = gradprobe.check(_model(), torch.randn(8, 4, 3), config={})  # check() too: no second warning
    assert report.findings is not None
    assert not [w for w in again if issubclass(w.category, gradprobe.GradprobeWarning)]


def test_7_the_disk_fills_under_the_run_log(tmp_path, monkeypatch):
    real_write = EventWriter.write
    calls = {"n": 0}

    def write(self, kind, **fields):
        calls["n"] += 1
        if calls["n"] > 12:
            raise OSError(28, "No space left on device")
        real_write(self, kind, **fields)

    monkeypatch.setattr(EventWriter, "write", write)
    seen = []
    probe, losses, ours = _probed_run(
        tmp_path, sinks=[seen.append]
    )  # close() at the end of the with block does not raise
    assert losses == REFERENCE and len(ours) == 1 and "No space left" in str(ours[0].message)
    assert "run log" in str(ours[0].message)
    assert sum(1 for e in seen if e["kind"] == "step") == STEPS  # the sinks and the rules go on
    events = list(iter_events(tmp_path / "run.log"))  # what was written stays readable
    assert events[0]["kind"] == "meta"
    assert isinstance(probe.findings, list) and not probe.disabled


@pytest.mark.parametrize("fault", ["step-before-backward", "frozen-model"])
def test_9_no_gradients_is_a_warning_and_a_finding_never_ok(tmp_path, fault):
    model = _model()
    if fault == "frozen-model":
        model.requires_grad_(False)
    with pytest.warns(gradprobe.GradprobeWarning, match="no gradient in the first 3 steps") as caught:
        with gradprobe.attach(model, log=tmp_path / "run.log", every=10, config={}) as probe:
            for _ in range(10):
                out, _ = model(torch.randn(8, 4, 3))
                probe.step(out.pow(2).mean())  # no backward()
    assert len([w for w in caught if issubclass(w.category, gradprobe.GradprobeWarning)]) == 1
    (finding,) = [f for f in probe.findings if f.code == "GP002"]
    assert finding.severity == "warning" and "10 recorded steps" in finding.message
    from gradprobe.report import summarize_logs

    assert summarize_logs([tmp_path / "run.log"], config={}).fails("warning")  # the report never says ok


def test_10_torch_save_and_deepcopy_while_attached(tmp_path):
    import copy
    import io

    model = _model()
    with gradprobe.attach(model, log=tmp_path / "run.log", every=10, config={}) as probe:
        losses = _train(model, probe, steps=5)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        twin = copy.deepcopy(model)
        losses += _train(model, probe, steps=5)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (loaded, twin):
        assert _train(other, steps=2)  # trains; its inert hooks record nothing
    assert _steps_logged(tmp_path) == 10 and probe.error is None
    assert losses[:5] == REFERENCE[:5]


def test_11_ranks_sharing_one_log_path_each_write_their_own_file(tmp_path, monkeypatch):
    """Two ranks stepping in turn, as concurrent processes do, both given run.log.

    Simulated in one process (the rank comes from a patched process group); the
    real gloo run is ``tests/examples/test_examples.py::test_ddp_*``.
    """
    from gradprobe import distributed
    from gradprobe.report import summarize_logs

    models, probes = [_model(), _model()], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rank, model in enumerate(models):
            monkeypatch.setattr(distributed, "rank_and_world", lambda rank=rank: (rank, 2))
            probes.append(gradprobe.attach(model, log=tmp_path / "run.log", every=10, config={}))
        torch.manual_seed(1)
        opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
        losses: list[list[float]] = [[], []]
        for _ in range(STEPS):
            x = torch.randn(8, 4, 3)
            for rank in (0, 1):  # interleaved writes to what was one path
                out, _ = models[rank](x)
                loss = out.pow(2).mean()
                opts[rank].zero_grad()
                loss.backward()
                probes[rank].step(loss)
                opts[rank].step()
                losses[rank].append(loss.item())
        for probe in probes:
            probe.close()
    ours = [w for w in caught if issubclass(w.category, gradprobe.GradprobeWarning)]
    assert losses == [REFERENCE, REFERENCE]
    assert len(ours) == 1 and "2 ranks share the log path" in str(ours[0].message)  # said once, by rank 0
    assert not (tmp_path / "run.log").exists()
    for rank in (0, 1):
        problems: list = []
        events = list(iter_events(tmp_path / f"run.rank{rank}.log", problems))
        assert not problems and events[0]["rank"] == rank
        assert sum(e["kind"] == "step" for e in events) == STEPS
    summary = summarize_logs([tmp_path / "run.log"], config={})
    assert [log.rank for log in summary.logs] == [0, 1] and summary.steps == 2 * STEPS  # step events of both ranks


def test_12_the_pytest_plugin_does_not_import_torch_for_suites_that_do_not_use_it(pytester):
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    pytester.makepyfile(
        **{
            f"test_plain_{i}": f"import sys\n\ndef test_{i}():\n    assert 'torch' not in sys.modules\n"
            for i in range(3)
        }
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=3)
    assert re.search(r"^plugins: .*\bgradprobe-", result.stdout.str(), re.MULTILINE)  # the plugin was loaded


# -- round two: every exception a plugin can raise, logs that cannot be opened, reports that stay parseable -----


@pytest.mark.parametrize(
    "broken",
    [
        "tests.fault_plugins:LINT_EXITS",
        "tests.fault_plugins:SUMMARIZE_EXITS",
        "tests.fault_plugins:EVENT_HOOK_GENERATOR_EXIT",
    ],
)
def test_a_plugin_raising_system_exit_or_generator_exit_is_switched_off_alone(tmp_path, installed, broken):
    """SystemExit and GeneratorExit are not Exceptions: attach(), training and close() still never see them."""
    installed(broken=broken)
    probe, losses, ours = _probed_run(tmp_path)
    assert losses == REFERENCE and len(ours) == 1 and "'broken'" in str(ours[0].message)
    assert _steps_logged(tmp_path) == STEPS and not probe.disabled and isinstance(probe.findings, list)


def test_a_sink_raising_system_exit_or_keyboard_interrupt_is_switched_off_alone(tmp_path):
    """A sink runs on its own thread: whatever it raises (even KeyboardInterrupt, which there is not the user's
    Ctrl-C) switches it off alone."""
    for error in (SystemExit(3), KeyboardInterrupt()):

        def raises(event, error=error):
            if event["kind"] == "step":
                raise error

        probe, losses, ours = _probed_run(tmp_path, sinks=[raises])
        assert losses == REFERENCE and len(ours) == 1 and type(error).__name__ in str(ours[0].message)
        assert _steps_logged(tmp_path) == STEPS and any(part.startswith("sink") for part in probe.faults)


def test_a_sink_cannot_change_what_the_next_one_sees_nested_values_included(tmp_path):
    """Case 5: events are read-only down to their nested mappings and series."""

    def meddling(event):
        if event["kind"] == "step":
            event["params"].clear()
        if event["kind"] == "deep":
            event["grad_norms"].append(0.0)

    seen = []
    _, losses, ours = _probed_run(tmp_path, sinks=[meddling, seen.append])
    assert losses == REFERENCE and len(ours) == 1 and "read-only" in str(ours[0].message)
    assert all(event["params"] for event in seen if event["kind"] == "step")
    logged = {e["step"]: e for e in iter_events(tmp_path / "run.log") if e["kind"] == "deep"}
    assert [e["grad_norms"] for e in seen if e["kind"] == "deep"] == [logged[s]["grad_norms"] for s in sorted(logged)]
    assert isinstance(seen[0], dict) and json.loads(json.dumps(seen[-1])) == seen[-1]


def test_a_report_plugin_that_edits_the_events_cannot_flip_the_verdict(tmp_path, installed, vanishing_run):
    """Case 5 in gradprobe report: a gradprobe_observe that edits the events it is shown is switched off; the
    verdict and the JSON report are those without it."""
    from click.testing import CliRunner

    from gradprobe.cli import main

    def report():
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return CliRunner().invoke(main, ["report", str(vanishing_run), "--format", "json"])

    honest = report()
    installed(editor="tests.fault_plugins:OBSERVE_EDITS")
    edited = report()
    assert honest.exit_code == edited.exit_code == 1
    assert "'editor'" in edited.stderr and "read-only" in edited.stderr
    honest_findings, edited_findings = json.loads(honest.stdout)["findings"], json.loads(edited.stdout)["findings"]
    assert all(finding in edited_findings for finding in honest_findings)  # GP101 and the rest, unchanged
    extra = [f for f in edited_findings if f not in honest_findings]
    assert extra and all(f["code"] == "GP001" and "editor" in f["message"] for f in extra)  # never silent


@pytest.fixture
def vanishing_run(tmp_path):
    """The log of a run whose gradient vanishes (GP101): a report verdict of 1."""
    torch.manual_seed(0)
    model = nn.RNN(4, 16)
    with torch.no_grad():
        model.weight_hh_l0.mul_(0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log = tmp_path / "vanishing.log"
    with gradprobe.attach(model, log=log, every=5, config={}, dependency_length=60) as probe:
        for _ in range(10):
            out, _ = model(torch.randn(80, 4, 4))
            loss = out[-1].pow(2).mean()
            opt.zero_grad()
            loss.backward()
            probe.step(loss)
            opt.step()
    return log


def test_ctrl_c_inside_a_plugin_hook_reaches_the_user(installed):
    installed(interrupted="tests.fault_plugins:EVENT_HOOK_INTERRUPTED")
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        with gradprobe.attach(model, every=10, config={}) as probe:
            _train(model, probe, steps=2)


def test_a_hung_sink_never_holds_a_step_up(tmp_path, monkeypatch):
    """Case 1: a sink that never returns loses events (one warning when its queue fills, one when the run
    closes without it), and training, the run log and the findings go on as without it."""
    monkeypatch.setattr(courier, "CAPACITY", 8)
    monkeypatch.setattr(courier, "CLOSE_SECONDS", 0.3)
    release = threading.Event()
    received = []

    def hangs(event):
        received.append(event["kind"])
        release.wait()

    try:
        probe, losses, ours = _probed_run(tmp_path, sinks=[hangs])
    finally:
        release.set()
    assert losses == REFERENCE and received == ["meta"]
    messages = [str(w.message) for w in ours]
    assert len(messages) == 2, messages
    assert "falling behind" in messages[0] and "gave up on sink" in messages[1]
    assert _steps_logged(tmp_path) == STEPS and not probe.disabled
    faults = [e for e in iter_events(tmp_path / "run.log") if e["kind"] == "fault"]
    assert len(faults) == 1 and "dropped events" in faults[0]["message"]


def test_a_slow_sink_gets_every_event_in_order_by_the_end_of_the_run(tmp_path):
    seen = []

    def slow(event):
        time.sleep(0.002)
        seen.append(dict(event))

    _probe, losses, ours = _probed_run(tmp_path, sinks=[slow])
    assert losses == REFERENCE and not ours
    logged = [(e["kind"], e.get("step")) for e in iter_events(tmp_path / "run.log")]
    assert [(e["kind"], e.get("step")) for e in seen] == logged


@pytest.mark.parametrize(
    ("plugin", "hook"),
    [
        ("OBSERVE_HANGS", "gradprobe_observe"),
        ("EVENT_HOOK_HANGS", "gradprobe_event_written"),
        ("SUMMARIZE_HANGS", "gradprobe_summarize"),
    ],
)
def test_a_hung_plugin_hook_is_interrupted_and_switched_off(tmp_path, installed, monkeypatch, plugin, hook):
    """Case 1: a plugin hook on the training thread that loops for ever is interrupted after its time budget
    (again if it swallows the interruption) and switched off alone; training and the log go on."""
    monkeypatch.setenv("GRADPROBE_HOOK_SECONDS", "0.2")
    installed(broken=f"tests.fault_plugins:{plugin}")
    probe, losses, ours = _probed_run(tmp_path)
    assert losses == REFERENCE and len(ours) == 1
    assert "'broken'" in str(ours[0].message) and "time budget of 0.2 s" in str(ours[0].message)
    assert hook in str(ours[0].message)
    assert _steps_logged(tmp_path) == STEPS and not probe.disabled and isinstance(probe.findings, list)


def test_a_plugin_hook_blocked_in_one_long_c_call_is_switched_off_when_it_returns(tmp_path, installed, monkeypatch):
    monkeypatch.setenv("GRADPROBE_HOOK_SECONDS", "0.2")
    installed(slow="tests.fault_plugins:OBSERVE_SLOW")
    _probe, losses, ours = _probed_run(tmp_path)
    assert losses == REFERENCE and len(ours) == 1 and "time budget of 0.2 s" in str(ours[0].message)
    assert "'slow'" in str(ours[0].message) and _steps_logged(tmp_path) == STEPS


def test_a_late_return_switches_the_plugin_off_where_nothing_can_interrupt_it(tmp_path, installed, monkeypatch):
    """Off CPython (no asynchronous exceptions) a call past the budget is judged when it returns."""
    from gradprobe import watchdog

    monkeypatch.setattr(watchdog, "_can_interrupt", lambda: False)
    monkeypatch.setenv("GRADPROBE_HOOK_SECONDS", "0.2")
    installed(slow="tests.fault_plugins:OBSERVE_SLOW")
    _probe, losses, ours = _probed_run(tmp_path)
    assert (
        losses == REFERENCE
        and len(ours) == 1
        and re.search(r"took 0\.\d s, past its time budget", str(ours[0].message))
    )
    assert _steps_logged(tmp_path) == STEPS


def test_report_bounds_a_hung_plugin_hook(tmp_path, installed, monkeypatch):
    """The report calls the same hooks: a plugin whose summary never returns is interrupted; exit 0/1, never a
    hang."""
    from click.testing import CliRunner

    from gradprobe.cli import main

    _probed_run(tmp_path)
    monkeypatch.setenv("GRADPROBE_HOOK_SECONDS", "0.2")
    installed(broken="tests.fault_plugins:SUMMARIZE_HANGS")
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # the command prints its warnings on one line each
        result = CliRunner().invoke(main, ["report", str(tmp_path / "run.log"), "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["verdict"]
    assert "'broken'" in result.stderr and "time budget of 0.2 s" in result.stderr


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_a_log_that_cannot_be_opened_is_switched_off_like_a_full_disk(tmp_path, where):
    """One behaviour for every log failure: one warning, a fault, training and the findings go on."""
    target = tmp_path
    if where == "under a file":
        (tmp_path / "plain.txt").write_text("x")
        target = tmp_path / "plain.txt" / "run.log"
    model = _model()
    with pytest.warns(gradprobe.GradprobeWarning, match="switched off the run log"):
        with gradprobe.attach(model, log=target, every=10, config={}) as probe:
            losses = _train(model, probe)
    assert losses == REFERENCE and not probe.disabled and isinstance(probe.findings, list)
    assert any(part.startswith("the run log") and "opening" in why for part, why in probe.faults.items())


def test_a_plugin_printing_to_stdout_leaves_the_json_report_parseable(tmp_path, installed):
    import json

    from click.testing import CliRunner

    from gradprobe.cli import main

    _probed_run(tmp_path)
    installed(talker="tests.fault_plugins:OBSERVE_PRINTS")
    result = CliRunner().invoke(main, ["report", str(tmp_path / "run.log"), "--format", "json"])
    assert result.exit_code in (0, 1)
    assert json.loads(result.stdout)["schema"].startswith("gradprobe-report")
    assert "a plugin talking on stdout" in result.stderr
