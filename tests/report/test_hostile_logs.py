"""Hostile and mutated logs: `gradprobe report` answers 0, 1 or 2 with one-line warnings, never an internal error.

The numbered cases are those of the faults issue, round two (9-14); the seeded
mutator turns a real log into a few hundred broken ones (values of the wrong
type, huge integers, nesting past Python's recursion limit, lone surrogates,
missing fields, stray events, bad recorded configurations, series stretched to
50,000 points) and runs every
report format on each, with and without msgspec.
"""

from __future__ import annotations

import json
import random
import time
import tracemalloc

import pytest
from click.testing import CliRunner

from gradprobe import fast_lines
from gradprobe.cli import EXIT_BAD_INPUT, EXIT_FINDINGS, EXIT_OK, main

ANSWERS = (EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT)

WEIRD = [
    None, True, 0, -1, 10**400, 1e308, float("nan"), "", "x\nVerdict: healthy", "\ud800", [], {}, [1, [2]],
    {"a": {"b": None}}, "inf", "-inf", "nan", 3.5, 2**63, [None], {"w": None}, ["a"], [[1.0]], {"k": [1]},
]  # fmt: skip
KINDS = ["deep", "step", "saturation", "finding", "meta", "fix", "loop", "unmeasured", "error", "fault", "schedule"]
CONFIGS = [{"ignore": 5}, {"thresholds": 3}, {"thresholds": {"GP101": 3}}, {"fail-on": 7}, {"signals": []}, "x", 5]


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def mutate(events: list[dict], rng: random.Random) -> list[dict]:
    """A few random breaks of a real log's events (seeded: the same seed breaks the same way)."""
    events = [dict(e) for e in events]
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(events))
        event, op = events[i], rng.random()
        keys = [k for k in event if k != "v"]
        if op < 0.35:
            event[rng.choice(keys)] = rng.choice(WEIRD)
        elif op < 0.5:
            key = rng.choice(keys)
            if key != "kind":
                del event[key]
        elif op < 0.65:
            key = rng.choice(keys)
            value = event[key]
            if isinstance(value, list) and value:
                value = list(value)
                value[rng.randrange(len(value))] = rng.choice(WEIRD)
            elif isinstance(value, dict) and value:
                value = dict(value)
                value[rng.choice(list(value))] = rng.choice(WEIRD)
            event[key] = value
        elif op < 0.75:
            event[rng.choice(["layer", "module", "mode", "name", "code", "message", "where", "model"])] = rng.choice(
                WEIRD
            )
        elif op < 0.77:
            deep = next((e for e in events if e.get("kind") == "deep"), event)
            deep[rng.choice(["grad_norms", "profile", "jacobian_norms"])] = [rng.random() for _ in range(50_000)]
        elif op < 0.85:
            events.insert(i, {"v": 1, "kind": rng.choice(KINDS), "step": rng.choice([0, 1, None, -5, 10**30])})
        else:
            event["config"] = rng.choice(CONFIGS)
    return events


def write(path, events: list[dict], rng: random.Random | None = None) -> None:
    lines = []
    for event in events:
        text = json.dumps(event, separators=(",", ":"))  # as the probe writes: the fast reader reads it
        if rng is not None and rng.random() < 0.01:
            text = text[:-1] + ',"deep":' + _nested(1200) + "}"
        lines.append(text + "\n")
    path.write_text("".join(lines), encoding="utf-8", errors="surrogatepass")


#: Seconds one report of a mutated log may take (a few tens of milliseconds in practice).
SECONDS = 20.0


def report(path, fmt: str, *extra: str, memory: bool = False):
    """``gradprobe report``, answering 0, 1 or 2 in bounded time (and, with ``memory``, bounded memory: what it
    traces stays under 30 MB plus 100 times the log's size)."""
    if memory:
        tracemalloc.start()
    started = time.monotonic()
    try:
        result = CliRunner().invoke(main, ["report", str(path), "--format", fmt, *extra])
        took = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1] if memory else 0
    finally:
        if memory:
            tracemalloc.stop()
    assert result.exit_code in ANSWERS, (path, fmt, result.exit_code, result.output[-500:])
    assert "internal error" not in result.output and "Traceback" not in result.output
    assert took < SECONDS, (path, fmt, took)
    assert peak < 30e6 + 100 * path.stat().st_size, (path, fmt, peak)
    return result


def _events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("block", range(6))
def test_mutated_logs_get_an_answer_never_an_internal_error(tmp_path, vanishing_log, monkeypatch, block):
    """300 seeded mutations of a real log (6 blocks of 50), every format, each in bounded time (and every tenth in
    bounded memory); the JSON report is the same with and without msgspec."""
    base = _events(vanishing_log)
    for seed in range(block * 50, block * 50 + 50):
        rng = random.Random(seed)
        path = tmp_path / f"m{seed}.log"
        write(path, mutate(base, rng), rng)
        for fmt in ("text", "html"):
            report(path, fmt, "-o", str(tmp_path / f"m{seed}.{fmt}"), memory=seed % 10 == 0)
        fast = report(path, "json")
        with monkeypatch.context() as patched:
            patched.setattr(fast_lines, "msgspec", None)
            plain = report(path, "json")
        assert fast.exit_code == plain.exit_code
        assert _without_times(fast.stdout) == _without_times(plain.stdout), seed


def _without_times(text: str) -> object:
    """The JSON report, with each problem's wording left out (the two parsers word a corrupt line differently;
    the lines they skip must be the same)."""
    if not text.strip():
        return text
    data = json.loads(text)
    for log in data.get("logs", []):
        log["problems"] = [problem["line"] for problem in log.get("problems", [])]
    return data


def _broken(tmp_path, vanishing_log, kind: str, change) -> object:
    events = _events(vanishing_log)
    index = next(i for i, e in enumerate(events) if e["kind"] == kind)
    change(events[index])
    path = tmp_path / "broken.log"
    write(path, events)
    return path


def test_json_nested_past_the_recursion_limit_is_a_skipped_line(tmp_path, vanishing_log):
    events = _events(vanishing_log)
    path = tmp_path / "deep.log"
    lines = [json.dumps(e) + "\n" for e in events]
    lines.insert(3, '{"v": 1, "kind": "step", "step": 2, "x": ' + _nested(5000) + "}\n")
    path.write_text("".join(lines))
    result = report(path, "text")
    assert result.exit_code == EXIT_FINDINGS and "line 4: corrupt line" in result.output


@pytest.mark.parametrize("fmt", ["text", "html", "json"])
def test_a_deep_event_without_its_series_is_read_as_empty(tmp_path, vanishing_log, monkeypatch, fmt):
    path = _broken(tmp_path, vanishing_log, "deep", lambda e: [e.pop(k) for k in ("grad_norms", "profile")])
    result = report(path, fmt)
    assert result.exit_code == EXIT_FINDINGS
    if fmt == "json":
        monkeypatch.setattr(fast_lines, "msgspec", None)
        assert json.loads(report(path, fmt).stdout) == json.loads(result.stdout)


@pytest.mark.parametrize(
    "recorded", [{"ignore": 5}, {"thresholds": 3}, {"thresholds": {"GP101": 3}}, {"fail-on": ["error"]}]
)
def test_a_recorded_configuration_of_the_wrong_type_is_a_warning(tmp_path, vanishing_log, recorded):
    path = _broken(tmp_path, vanishing_log, "meta", lambda e: e.update(config=recorded))
    result = report(path, "text")
    assert result.exit_code == EXIT_FINDINGS
    assert "the run's recorded configuration" in result.output and "judged with pyproject.toml instead" in result.output


def test_a_static_finding_without_a_layer_or_evidence_is_read(tmp_path, vanishing_log):
    events = _events(vanishing_log)
    events.insert(1, {"v": 1, "kind": "finding", "code": "GP202", "severity": "warning", "message": "forget bias 0"})
    path = tmp_path / "finding.log"
    write(path, events)
    for fmt in ("text", "html", "json"):
        assert report(path, fmt).exit_code == EXIT_FINDINGS


def test_an_integer_loss_beyond_any_float_is_infinite(tmp_path, vanishing_log):
    path = _broken(tmp_path, vanishing_log, "step", lambda e: e.update(loss=10**400))
    result = report(path, "json")
    assert result.exit_code == EXIT_FINDINGS
    training = json.loads(result.stdout)["training"]
    assert training["nonfinite_losses"] == 1 and training["first_nonfinite_loss_step"] == 0  # read as infinite


def test_a_lone_surrogate_in_a_layer_name_is_written(tmp_path, vanishing_log):
    path = _broken(tmp_path, vanishing_log, "deep", lambda e: e.update(layer="rnn\ud800"))
    html = tmp_path / "report.html"
    assert report(path, "html", "-o", str(html)).exit_code == EXIT_FINDINGS
    assert "rnn" in html.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("deep", lambda e: e.update(rate=10**400)),  # the schema's rate check, on an integer beyond any float
        ("meta", lambda e: e.update(settings=None)),  # an optional mapping left null
        ("meta", lambda e: e.update(layers=None, config=None)),
    ],
)
def test_values_the_mutator_found(tmp_path, vanishing_log, kind, change):
    path = _broken(tmp_path, vanishing_log, kind, change)
    for fmt in ("text", "html", "json"):
        report(path, fmt)


def test_a_name_from_the_log_cannot_forge_a_line_of_the_text_report(tmp_path, vanishing_log):
    forged = "rnn\nFindings: none\r\nVerdict: ok"
    events = _events(vanishing_log)
    for event in events:
        if event.get("layer"):
            event["layer"] = forged
        if event["kind"] == "meta":
            event["model"] = "Net\nVerdict: ok"
    path = tmp_path / "forged.log"
    write(path, events)
    result = report(path, "text")
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith(("Verdict: ok", "Findings: none"))]
    assert [line for line in lines if line.startswith("Verdict: FAIL")]
    assert any("rnn Findings: none Verdict: ok" in line for line in lines)  # shown, inside its own line
