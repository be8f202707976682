"""`gradprobe report` through click's CliRunner: content, formats, exit codes, bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gradprobe.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_text_report_groups_findings_with_evidence_and_fix(vanishing_log):
    result = run("report", vanishing_log)
    assert result.exit_code == 1, result.output
    out = result.output
    assert "Findings: 1 errors" in out
    error_block = out.split("  ERROR\n")[1]
    # since when: the horizon was short from the first deep probe on, and still at the last (step 16)
    assert error_block.startswith("    RNN.l0\n      GP101 vanishing-gradient steps 0-16 (first seen at step 0):")
    assert "< the 120 steps the task needs in RNN.l0" in out
    assert "evidence: horizon=" in out and "fix: orthogonal recurrent weights" in out
    assert "Gradient vs time step" in out and "RNN.l0  " in out and "T=120, horizon" in out
    assert "Verdict: FAIL (fail-on warning)" in out


def test_healthy_log_exits_zero(healthy_log):
    result = run("report", healthy_log)
    assert result.exit_code == 0, result.output
    assert "Findings: 0 errors, 0 warnings" in result.output and "Verdict: ok" in result.output


def test_fail_on_threshold_and_static_findings_from_attach_time(tmp_path):
    import torch
    from torch import nn

    from .conftest import write_run

    lstm = nn.LSTM(2, 16)
    with torch.no_grad():
        lstm.bias_ih_l0[16:32] = -1.0  # GP202 warning, judged when the probe attached
        lstm.bias_hh_l0[16:32] = 0.0
    path = tmp_path / "run.log"
    write_run(path, model=lstm, seq_len=8)
    result = run("report", path)
    assert "GP202 forget-gate-bias" in result.output
    assert result.exit_code == 1  # a warning fails the default fail-on (warning), as in Report.healthy and pytest
    assert run("report", path, "--fail-on", "error").exit_code == 0


def test_json_report_schema(vanishing_log):
    result = run("report", vanishing_log, "--format", "json")
    data = json.loads(result.stdout)
    assert data["schema"] == "gradprobe-report/1"
    assert data["verdict"] == {"fail_on": "warning", "failed": True, "worst": "error", "says": "FAIL"}
    assert set(data) == {"schema", "verdict", "logs", "run", "training", "layers", "findings"}
    layer = data["layers"]["RNN.l0"]
    assert layer["seq_len"] == 120 and len(layer["grad_norms"]) == 120 and layer["probes"] == 3
    assert data["training"]["steps"] == 24
    fields = {"code", "name", "severity", "layer", "step", "message", "evidence", "fix", "fixes"}
    assert fields | {"first_step", "last_step"} == set(data["findings"][0])
    assert (data["findings"][0]["first_step"], data["findings"][0]["last_step"]) == (0, 16)  # since when
    assert data["findings"][0]["fixes"][0] == {"action": "orthogonal-recurrent", "params": {}, "safety": "unsafe"}


def test_output_file(vanishing_log, tmp_path):
    out = tmp_path / "r.json"
    result = run("report", vanishing_log, "--format", "json", "-o", out)
    assert result.exit_code == 1 and json.loads(out.read_text())["schema"] == "gradprobe-report/1"


def test_truncated_and_corrupt_lines_are_reported_and_the_rest_is_read(vanishing_log, tmp_path):
    lines = vanishing_log.read_text().splitlines(keepends=True)
    broken = tmp_path / "broken.log"
    broken.write_text("".join(lines[:5]) + "garbage{\n" + "".join(lines[5:]) + lines[-1][: len(lines[-1]) // 2])
    result = run("report", broken, "--format", "json")
    data = json.loads(result.stdout)
    assert data["logs"][0]["problems"] == [
        {"line": 6, "message": data["logs"][0]["problems"][0]["message"]},
        {"line": len(lines) + 2, "message": "truncated last line"},
    ]
    assert data["logs"][0]["problems"][0]["message"].startswith("corrupt line")
    assert data["training"]["steps"] == 24 and any(f["code"] == "GP101" for f in data["findings"])
    text = run("report", broken)
    assert "line 6: corrupt line" in text.output and "truncated last line" in text.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hello\n", "is not a gradprobe run log"),
        ("", "holds no gradprobe event"),
        ('{"v": 1, "kind": "me', "holds no gradprobe event (line 1: truncated last line)"),
        ('{"v": 7, "kind": "meta"}\n', "unsupported log schema version 7"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "x.log"
    path.write_text(content)
    result = run("report", path)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and message in result.output and "Traceback" not in result.output


def test_missing_file_and_bad_config(tmp_path, vanishing_log):
    result = run("report", tmp_path / "missing.log")
    assert result.exit_code == 2 and "cannot open" in result.output
    (tmp_path / "pyproject.toml").write_text("[tool.gradprobe]\nignore = 'GP101'\n")
    result = run("report", vanishing_log, "--config", tmp_path / "pyproject.toml")
    assert result.exit_code == 2 and "ignore must be a list" in result.output


def test_a_log_is_judged_with_the_configuration_its_run_recorded_wherever_the_report_runs(
    tmp_path, monkeypatch, vanishing_log
):
    first = run("report", vanishing_log, "--format", "json")
    for folder, table in (("a", 'ignore = ["GP101"]\nfail-on = "info"\n'), ("b", 'fail-on = "error"\n')):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "pyproject.toml").write_text("[tool.gradprobe]\n" + table)
        monkeypatch.chdir(tmp_path / folder)
        again = run("report", vanishing_log, "--format", "json")
        assert (again.exit_code, again.stdout) == (first.exit_code, first.stdout)
    assert json.loads(first.stdout)["verdict"]["fail_on"] == "warning"


def test_config_option_and_logs_without_a_recorded_configuration_use_pyproject(tmp_path, monkeypatch, vanishing_log):
    (tmp_path / "pyproject.toml").write_text('[tool.gradprobe]\nignore = ["GP101"]\nfail-on = "info"\n')
    result = run("report", vanishing_log, "--config", tmp_path / "pyproject.toml")
    assert "GP101" not in result.output and "(fail-on info)" in result.output
    old = tmp_path / "old.log"  # written before runs recorded their configuration
    lines = vanishing_log.read_text().splitlines()
    meta = json.loads(lines[0])
    del meta["config"]
    old.write_text("\n".join([json.dumps(meta), *lines[1:]]) + "\n")
    monkeypatch.chdir(tmp_path)
    result = run("report", old)
    assert "GP101" not in result.output and "(fail-on info)" in result.output


def test_a_loss_that_turned_non_finite_is_reported_as_such(tmp_path):
    """The last finite value is not the end of the story: say when the loss went non-finite, and how often."""
    from gradprobe.events import EventWriter

    path = tmp_path / "nan.log"
    writer = EventWriter(path)
    writer.write("meta", layers=[], settings={})
    losses = [4.4 - 0.01 * i for i in range(70)] + [float("nan")] * 63
    for step, loss in enumerate(losses):
        writer.write("step", step=step, loss=loss, grad_norm=1.0, nonfinite=None)
    writer.close()
    out = run("report", str(path)).output
    assert "loss 4.4 -> non-finite (min 3.71); non-finite from step 70 (63 of 133 steps)" in out
    data = json.loads(run("report", str(path), "--format", "json").stdout)["training"]
    assert data["last_loss"] is None and data["nonfinite_losses"] == 63 and data["first_nonfinite_loss_step"] == 70
    assert "non-finite from step 70 (63 of 133 steps)" in run("report", str(path), "--format", "html").output
    assert "GP403 diverging-loss" in out
