"""The run log: versioned JSON Lines, tolerant reader, survives SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gradprobe.events import SCHEMA_VERSION, EventWriter, LogFormatError, iter_events


def test_roundtrip_with_non_finite_numbers(tmp_path):
    path = tmp_path / "run.log"
    writer = EventWriter(path)
    writer.write("meta", layers=[])
    writer.write("step", step=0, loss=float("nan"), grad_norm=float("inf"), params={"w": -float("inf")})
    writer.close()
    writer.write("step", step=1)  # ignored after close
    events = list(iter_events(path))
    assert [e["kind"] for e in events] == ["meta", "step"]
    assert all(e["v"] == SCHEMA_VERSION for e in events)
    assert events[1]["loss"] == "nan" and events[1]["grad_norm"] == "inf" and events[1]["params"]["w"] == "-inf"


def test_corrupt_and_truncated_lines_are_reported_and_skipped(tmp_path):
    path = tmp_path / "run.log"
    good = [json.dumps({"v": 1, "kind": "step", "step": i}) for i in range(4)]
    path.write_text("\n".join([good[0], good[1], "{not json", good[2], good[3], '{"v": 1, "kind": "st']))
    problems = []
    events = list(iter_events(path, problems))
    assert [e["step"] for e in events] == [0, 1, 2, 3]
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [(3, "corrupt line"), (6, "truncated last line")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("hello world\n", "is not a gradprobe run log"),
        ('{"v": 99, "kind": "meta"}\n', "unsupported log schema version 99"),
    ],
)
def test_files_that_are_not_logs_are_rejected(tmp_path, content, message):
    path = tmp_path / "x.log"
    path.write_text(content)
    with pytest.raises(LogFormatError, match=message):
        list(iter_events(path))


def test_missing_file_is_a_log_format_error(tmp_path):
    with pytest.raises(LogFormatError, match="cannot open"):
        list(iter_events(tmp_path / "absent.log"))


CHILD = textwrap.dedent(
    """
    import sys, time, torch, gradprobe
    model = torch.nn.GRU(3, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = gradprobe.attach(model, log=sys.argv[1], every=1000)
    step = 0
    while True:
        out, _ = model(torch.randn(10, 2, 3))
        loss = out.pow(2).mean(); loss.backward(); probe.step(loss); opt.step(); opt.zero_grad()
        print(step, time.monotonic(), flush=True)
        step += 1
        time.sleep(0.01)
    """
)


def test_sigkilled_run_leaves_a_readable_log_up_to_the_last_flush(tmp_path):
    log = tmp_path / "run.log"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(log)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        first_step_at = None
        for line in child.stdout:
            step, stamp = line.split()
            first_step_at = first_step_at or float(stamp)
            if float(stamp) - first_step_at > 3.0:  # ran for over the 2 s flush interval
                break
            assert time.monotonic() < deadline
        last_printed = int(step)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    problems = []
    events = list(iter_events(log, problems))
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert events[0]["kind"] == "meta"
    assert steps == list(range(len(steps)))
    # everything older than the flush interval is on disk
    assert len(steps) >= 0.2 * last_printed
    assert all(p.message == "truncated last line" for p in problems) and len(problems) <= 1


@pytest.mark.parametrize("fast", [True, False], ids=["msgspec", "json"])
def test_both_parsers_read_the_same_events_and_problems(tmp_path, monkeypatch, fast):
    """msgspec (gradprobe[fast]) and the standard parser agree, line for line, on what msgspec refuses too."""
    from gradprobe import fast_lines

    if fast and fast_lines.msgspec is None:
        pytest.skip("msgspec is not installed (pip install 'gradprobe[fast]')")
    if not fast:
        monkeypatch.setattr(fast_lines, "msgspec", None)
    path = tmp_path / "run.log"
    lines = [
        b'{"v": 1, "kind": "step", "step": 0, "loss": 0.5}',
        b'{"v": 1, "kind": "step", "step": 1, "loss": NaN}',  # a NaN literal: msgspec refuses, json reads it
        b'{"v": 1, "kind": "step", "step": 2, "params": {"w": 123456789012345678901234567890}}',  # beyond 64 bits
        b'{"v": 1, "kind": "step", "step": 123456789012345678901234567890}',  # no step number: a schema problem
        b'{"v": 1, "kind": "step", "step": 3, "note": "\xff"}',  # not UTF-8: corrupt for both
        b"{not json",
        b'{"v": 1, "kind": "step", "step": 4, "grad_norm": 1e3}',
        b'{"v":1,"kind":"step","step":5,"grad_norm":1e400,"lr":0.1}',  # the step struct refuses both: the generic path reads them
        b'{"v":1,"kind":"step","step":6,"loss":true}',  # a schema problem, whichever path sees it first
        b'{"v":2,"kind":"step","step":7}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    problems = []
    read = list(iter_events(path, problems))
    assert [e["step"] for e in read] == [0, 1, 2, 4, 5]
    assert read[1]["loss"] != read[1]["loss"]  # NaN
    assert float(read[2]["params"]["w"]) == 1.2345678901234568e29  # the step struct reads it as a float, json as an int
    assert read[3]["grad_norm"] == 1000.0 and isinstance(read[3]["grad_norm"], float)
    assert read[4]["grad_norm"] == float("inf") and read[4]["lr"] == 0.1  # nothing dropped
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [
        (4, "step event with a bad 'step'"),
        (5, "corrupt line"),
        (6, "corrupt line"),
        (9, "step event with a bad 'loss'"),
        (10, "unsupported schema version 2"),
    ]
