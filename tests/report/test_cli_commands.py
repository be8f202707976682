"""`gradprobe lint`, `rules`, `demo` through CliRunner."""

from __future__ import annotations

import re
import textwrap

from click.testing import CliRunner

from gradprobe.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_rules_table_and_doc():
    result = run("rules")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["code", "name", "severity", "kind", "summary"]
    assert [line.split()[0] for line in lines[1:]] == [
        "GP001",
        "GP002",
        "GP101",
        "GP102",
        "GP103",
        "GP201",
        "GP202",
        "GP203",
        "GP301",
        "GP302",
        "GP401",
        "GP402",
        "GP403",
        "GP501",
        "GP502",
        "GP503",
        "GP504",
        "GP505",
    ]
    doc = run("rules", "gp101").output
    assert doc.startswith("## GP101 vanishing-gradient") and "min_horizon_fraction" in doc
    for section in (
        "What it does",
        "Why is this bad?",
        "Known problems",
        "Example",
        "Use instead",
        "Fix safety",
        "Options",
        "References",
    ):
        assert f"### {section}" in doc
    bad = run("rules", "GP999")
    assert bad.exit_code == 2 and "unknown rule code" in bad.output


def test_lint_factory(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def broken():
                lstm = nn.LSTM(4, 8)
                with torch.no_grad():
                    lstm.bias_ih_l0[8:16] = -3.0
                return lstm

            def dense():
                return nn.Linear(2, 2)

            def explodes():
                raise RuntimeError("boom")
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    result = run("lint", "mymodels:broken")
    assert result.exit_code == 1
    assert "GP202 forget-gate-bias [error] LSTM.l0" in result.output and "fix: forget-gate bias 1" in result.output
    for spec, message in [
        ("mymodels:dense", "has no recurrent layer"),
        ("mymodels:explodes", "mymodels:explodes() failed: RuntimeError: boom"),
        ("mymodels:nope", "has no attribute 'nope'"),
        ("nomodule:f", "cannot import 'nomodule'"),
        ("mymodels", "expected MODULE:FACTORY"),
    ]:
        result = run("lint", spec)
        assert result.exit_code == 2 and message in result.output, (spec, result.output)
        assert "Traceback" not in result.output


def test_demo_flags_then_fixes(tmp_path):
    result = run("demo", "--out", tmp_path, "--steps", "60", "--seq-len", "60")
    assert result.exit_code == 0, result.output
    assert "GP101 vanishing-gradient" in result.output
    assert "chrono init of forget/input biases (T_max=60)" in result.output
    assert (tmp_path / "run.log").exists() and (tmp_path / "fixed.log").exists()
    assert "reaches test MSE" in result.output


def test_the_demo_leaves_the_denormal_setting_as_it_found_it(tmp_path):
    from gradprobe.demo import TrainingSetup, _flushing_denormals, run_demo

    before = _flushing_denormals()
    run_demo(tmp_path, TrainingSetup(steps=2, seq_len=5, batch=4, lr=1e-2, seed=0), hidden=4, echo=lambda _: None)
    assert _flushing_denormals() == before


def test_a_command_leaves_the_process_as_it_found_it(tmp_path, monkeypatch):
    """One-line warnings and --disable-plugin hold for the command only (no process-wide state left behind)."""
    import os
    import warnings

    from gradprobe.plugins import DISABLE_ENV

    monkeypatch.delenv(DISABLE_ENV, raising=False)
    before = warnings.showwarning
    result = CliRunner().invoke(main, ["--disable-plugin", "gradprobe.rules.gp203_input_weight_scale", "rules"])
    assert result.exit_code == 0 and "GP203" not in result.output and "GP101" in result.output
    assert warnings.showwarning is before
    assert DISABLE_ENV not in os.environ
    monkeypatch.setenv(DISABLE_ENV, "some-plugin")
    CliRunner().invoke(main, ["--disable-plugin", "other", "rules"])
    assert os.environ[DISABLE_ENV] == "some-plugin"


def test_plugins_columns_never_run_together():
    from click.testing import CliRunner

    from gradprobe.cli import main

    lines = CliRunner().invoke(main, ["plugins"]).output.splitlines()
    row = next(line for line in lines if line.startswith("gradprobe.rules.gp401_no_clipping_with_exploding_risk"))
    assert "gp401_no_clipping_with_exploding_risk  built-in" in row


def test_rules_show_every_severity_a_rule_raises():
    from click.testing import CliRunner

    from gradprobe.cli import main

    output = CliRunner().invoke(main, ["rules"]).output
    assert re.search(r"^GP101\s+vanishing-gradient\s+info-error\s", output, re.MULTILINE)
    assert re.search(r"^GP103\s+non-finite-gradient\s+error\s", output, re.MULTILINE)


def test_a_binary_file_is_not_a_run_log(tmp_path):
    from click.testing import CliRunner

    from gradprobe.cli import main

    path = tmp_path / "picture.log"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    result = CliRunner().invoke(main, ["report", str(path)])
    assert result.exit_code == 2 and "binary data" in result.output and "truncated" not in result.output
