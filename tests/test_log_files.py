"""Faults round two, cases 6 and 7: no two writers ever share a run log, and the report never merges two runs.

A path another live writer holds (a second process, a second probe of this
process) is left alone: the new run writes ``run.1.log``, with one warning.
A probe whose start fails leaves an earlier log as it was. A log holding two
runs, or two logs that are not the ranks of one distributed run, are refused
by the report (exit 2, one line).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import gradprobe
from gradprobe.cli import main
from gradprobe.events import iter_events
from gradprobe.log_file import fcntl

STEPS = 12

needs_flock = pytest.mark.skipif(fcntl is None, reason="no fcntl (Windows): run logs are not locked there")


def _model():
    torch.manual_seed(0)
    return nn.GRU(3, 6)


def _train(model, probe, steps=STEPS):
    torch.manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        out, _ = model(torch.randn(8, 4, 3))
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        probe.step(loss)
        opt.step()


def _kinds(path):
    return [event["kind"] for event in iter_events(path)]


@needs_flock
def test_a_second_probe_on_the_same_path_writes_a_sibling_and_truncates_nothing(tmp_path):
    log = tmp_path / "run.log"
    first_model, second_model = _model(), _model()
    with gradprobe.attach(first_model, log=log, every=5, config={}) as first:
        _train(first_model, first, steps=3)
        with pytest.warns(gradprobe.GradprobeWarning, match=r"run\.log is being written by another run.*run\.1\.log"):
            second = gradprobe.attach(second_model, log=log, every=5, config={})
        with second:
            _train(second_model, second)
        _train(first_model, first, steps=STEPS - 3)
    assert first.log_path == log and second.log_path == tmp_path / "run.1.log"
    for path in (log, tmp_path / "run.1.log"):
        kinds = _kinds(path)
        assert kinds.count("meta") == 1 and kinds.count("step") == STEPS, (path, kinds)
    # once the first run is closed its path is free again: a new run replaces it, as ever
    with gradprobe.attach(_model(), log=log, every=5, config={}) as third:
        pass
    assert third.log_path == log and _kinds(log).count("step") == 0


def test_a_failed_attach_leaves_an_earlier_log_as_it_was(tmp_path):
    log = tmp_path / "run.log"
    model = _model()
    with gradprobe.attach(model, log=log, every=5, config={}) as probe:
        _train(model, probe)
    before = log.read_bytes()
    with pytest.raises(TypeError, match="optimizer must be"):
        gradprobe.attach(model, log=log, optimizer=object(), config={})
    assert log.read_bytes() == before
    fresh = tmp_path / "fresh.log"
    with pytest.raises(TypeError, match="optimizer must be"):
        gradprobe.attach(model, log=fresh, optimizer=object(), config={})
    assert not fresh.exists()  # nothing was written: no empty file left behind


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    sys.path.insert(0, sys.argv[4])
    import gradprobe
    from tests.test_log_files import _model, _train

    log, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    model = _model()
    with gradprobe.attach(model, log=log, every=5, config={}) as probe:
        ready.write_text("attached")
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        _train(model, probe)
    """
)


@needs_flock
def test_two_processes_on_one_log_path_write_two_whole_logs(tmp_path):
    """Case 6: a second process (no torch.distributed) given the same path loses nothing and corrupts nothing."""
    log, ready, go = tmp_path / "run.log", tmp_path / "ready", tmp_path / "go"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), str(log), str(ready), str(go), str(Path(__file__).resolve().parent.parent)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), child.stderr.read() if child.poll() is not None else "the child never attached"
        model = _model()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with gradprobe.attach(model, log=log, every=5, config={}) as probe:
                go.write_text("go")  # both processes train at once from here
                _train(model, probe)
        assert child.wait(timeout=120) == 0
    finally:
        if child.poll() is None:
            child.kill()
    assert probe.log_path == tmp_path / "run.1.log"
    assert [str(w.message) for w in caught if "being written by another run" in str(w.message)]
    for path in (log, tmp_path / "run.1.log"):
        problems = []
        kinds = [event["kind"] for event in iter_events(path, problems)]
        assert not problems and kinds.count("meta") == 1 and kinds.count("step") == STEPS, (path, kinds)


def test_the_report_refuses_a_log_that_holds_two_runs(tmp_path):
    runs = []
    for name in ("a.log", "b.log"):
        model = _model()
        with gradprobe.attach(model, log=tmp_path / name, every=5, config={}) as probe:
            _train(model, probe)
        runs.append((tmp_path / name).read_bytes())
    mixed = tmp_path / "mixed.log"
    mixed.write_bytes(b"".join(runs))
    result = CliRunner().invoke(main, ["report", str(mixed)])
    assert result.exit_code == 2 and "holds more than one run" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(main, ["report", str(tmp_path / "a.log"), str(tmp_path / "b.log")])
    assert result.exit_code == 2 and "not the ranks of one distributed run" in result.output
    assert "Traceback" not in result.output


@needs_flock
def test_a_file_system_without_locks_still_gets_its_log(tmp_path, monkeypatch):
    """Some network mounts refuse flock (ENOLCK): the log is written unlocked, never switched off for it."""
    import errno

    from gradprobe import log_file

    def refuses(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(log_file.fcntl, "flock", refuses)
    model = _model()
    with gradprobe.attach(model, log=tmp_path / "run.log", every=5, config={}) as probe:
        _train(model, probe)
    assert probe.log_path == tmp_path / "run.log" and _kinds(tmp_path / "run.log").count("step") == STEPS
