"""Hand-made logs with ``"v": 1`` but wrong field types or missing fields: skipped with their line, never a crash.

And every exit code of the CLI: 0 healthy, 1 findings, 2 bad input, 3 internal error.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gradprobe.cli import EXIT_BAD_INPUT, EXIT_FINDINGS, EXIT_INTERNAL, EXIT_OK, main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _first(events, kind):
    return next(i for i, e in enumerate(events) if e["kind"] == kind)


# (kind of the event to break, how to break it, what the warning names)
BREAKS = [
    ("deep", lambda e: e.pop("layer"), "without 'layer'"),
    ("deep", lambda e: e.update(rate=1000), "bad 'rate'"),
    ("deep", lambda e: e.update(grad_norms="many"), "bad 'grad_norms'"),
    ("deep", lambda e: e.update(horizon=-3), "bad 'horizon'"),
    ("deep", lambda e: e.update(step="12"), "bad 'step'"),
    ("deep", lambda e: e.update(epsilon=5), "bad 'epsilon'"),
    ("step", lambda e: e.pop("step"), "without 'step'"),
    ("step", lambda e: e.update(loss=[1, 2]), "bad 'loss'"),
    ("step", lambda e: e.update(params={"w": "big"}), "bad 'params'"),
    ("step", lambda e: e.update(gates=[1]), "bad 'gates'"),
    ("finding", lambda e: e.update(severity="fatal"), "bad 'severity'"),
    ("finding", lambda e: e.pop("message"), "without 'message'"),
    ("finding", lambda e: e.update(evidence=[1, 2]), "bad 'evidence'"),
    ("saturation", lambda e: e.update(fractions={"i": 7}), "bad 'fractions'"),
    ("meta", lambda e: e.update(layers="LSTM"), "bad 'layers'"),
    ("step", lambda e: e.update(kind=5), "'kind' is not a string"),
]


@pytest.mark.parametrize("fmt", ["text", "html", "json"])
@pytest.mark.parametrize(("kind", "breaker", "named"), BREAKS, ids=[f"{k}-{n}" for k, _, n in BREAKS])
def test_a_malformed_event_is_skipped_with_its_line(tmp_path, vanishing_log, fmt, kind, breaker, named):
    events = _events(vanishing_log)
    index = _first(events, "saturation" if kind == "saturation" else kind)
    breaker(events[index])
    path = tmp_path / "broken.log"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = run("report", path, "--format", fmt)
    assert result.exit_code in (EXIT_OK, EXIT_FINDINGS), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert f"line {index + 1}: " in result.output and named in result.output


def test_control_characters_in_log_strings_never_reach_the_terminal(tmp_path, vanishing_log):
    events = _events(vanishing_log)
    finding = events[_first(events, "finding")]
    finding["message"] = "evil \x1b[2J\x1b]0;pwned\x07 text\r"
    path = tmp_path / "evil.log"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = run("report", path)
    assert "\x1b" not in result.output and "\x07" not in result.output and "\r" not in result.output
    assert "evil [2J]0;pwned text" in result.output


def test_exit_codes(tmp_path, vanishing_log, healthy_log, monkeypatch):
    assert run("report", healthy_log).exit_code == EXIT_OK
    assert run("report", vanishing_log).exit_code == EXIT_FINDINGS
    missing = run("report", tmp_path / "missing.log")
    assert missing.exit_code == EXIT_BAD_INPUT and "gradprobe: error:" in missing.output
    foreign = tmp_path / "foreign.log"
    foreign.write_text("hello\n")
    assert run("report", foreign).exit_code == EXIT_BAD_INPUT

    def crash(*args, **kwargs):
        raise RuntimeError("renderer bug")

    monkeypatch.setattr("gradprobe.report.text.render_text", crash)
    internal = run("report", healthy_log)
    assert internal.exit_code == EXIT_INTERNAL
    assert internal.output.strip().splitlines() == [
        "gradprobe: internal error: RuntimeError: renderer bug (run with --debug for the traceback)"
    ]
    debug = run("--debug", "report", healthy_log)
    assert isinstance(debug.exception, RuntimeError)  # --debug lets the traceback through


def test_plugins_command_lists_hooks_and_status(monkeypatch):
    monkeypatch.setenv("GRADPROBE_DISABLE_PLUGINS", "gradprobe.rules.gp402_truncation_vs_horizon")
    result = run("--disable-plugin", "gradprobe.rules.gp403_diverging_loss", "plugins")
    assert result.exit_code == EXIT_OK, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert (
        "active" in lines["gradprobe.rules.gp101_vanishing_gradient"]
        and "summarize" in lines["gradprobe.rules.gp101_vanishing_gradient"]
    )
    assert "disabled" in lines["gradprobe.rules.gp402_truncation_vs_horizon"]
    assert "disabled" in lines["gradprobe.rules.gp403_diverging_loss"]
