"""Every example runs, with reduced steps, and shows what it promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from gradprobe.events import iter_events

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_char_lm_wraps_a_plain_loop(load_example, tmp_path, capsys):
    result = load_example("char_lm").main(["--steps", "40", "--every", "20", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert result["bits_per_char"] < result["uniform"]  # it learned something
    assert "gradprobe report:" in out and "rnn.l0" in out and "Verdict:" in out
    meta = next(iter_events(tmp_path / "char_lm.log"))
    assert meta["settings"]["truncation"] == 64 and meta["model"] == "CharLM"


def test_copy_memory_compares_horizons_with_the_delay(load_example, tmp_path, capsys):
    result = load_example("copy_memory").main(
        ["--steps", "40", "--delay", "20", "--every", "20", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert "horizon (last probe)" in out and "tanh RNN" in out and "GRU" in out and "LSTM" in out
    assert "GP101 vanishing-gradient" in out.split("GRU:")[0]  # the tanh RNN's gradient fades before the delay
    assert result["tanh RNN horizon"] < 30 < result["GRU horizon"]


def test_ddp_ranks_sharing_one_log_path_write_rank_files_and_the_report_reads_them(tmp_path):
    # a subprocess, as users run it: mp.spawn re-imports the example by its module path
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "ddp.py"), "--steps", "12", "--out", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert not (tmp_path / "run.log").exists()  # both ranks were given run.log
    for rank in (0, 1):
        problems: list = []
        events = list(iter_events(tmp_path / f"run.rank{rank}.log", problems))
        assert not problems  # no interleaved or torn lines
        assert (events[0]["rank"], events[0]["world_size"]) == (rank, 2)
        assert [e["step"] for e in events if e["kind"] == "step"] == list(range(12))
    assert done.stderr.count("2 ranks share the log path") == 1  # said once, by rank 0
    assert "(rank 0)" in text and "(rank 1)" in text and "ranks=[0, 1]" in text
    assert "24 step events across 2 logs" in text


def test_pytest_usage_example_passes(pytester):
    shutil.copy(EXAMPLES / "test_gradient_health.py", pytester.path / "test_gradient_health.py")
    result = pytester.runpytest("-p", "no:cacheprovider", "--gradprobe-report", "findings.json")
    result.assert_outcomes(passed=4)
    assert (pytester.path / "findings.json").exists()


def test_remedies(load_example):
    example = load_example("remedies")
    result = example.main(["--steps", "400"])
    assert result["clamped"] > 0
    clipped, regularized = result["flow"]
    assert clipped <= 0.6 and regularized >= 0.95
    assert len(result["lyapunov"]) == 4 and result["lyapunov"][0] < 0.5
    relu, leaky = result["relu"]
    assert "GP302" in relu and "GP302" not in leaky
