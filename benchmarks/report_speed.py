"""`gradprobe report` over a long log, as a ratio against plain ``json.loads`` of every line.

Writes a synthetic run log with the event mix of a real run (a step event with
per-parameter and per-gate norms every step, saturation every 10 steps, deep
events for two tracks with T=100 every 50 steps), then times, in one run:
reading it with ``json.loads`` line by line, and ``summarize_logs`` + text
rendering (as ``gradprobe report`` does; also with the HTML report's chart series). ``--memory-gb`` also grows the log to that size and reports the
peak memory of the report against a log ten times smaller (it stays flat).

    python benchmarks/report_speed.py [--steps 100000] [--repeats 5] [--no-fast] [--memory-gb 1.0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradprobe.events import EventWriter

PARAMS = [
    "rnn.weight_ih_l0",
    "rnn.weight_hh_l0",
    "rnn.bias_ih_l0",
    "rnn.bias_hh_l0",
    "rnn.weight_ih_l1",
    "rnn.weight_hh_l1",
    "rnn.bias_ih_l1",
    "rnn.bias_hh_l1",
    "head.weight",
    "head.bias",
]
GATES = ("input", "forget", "cell", "output")


def write_log(path: Path, steps: int, seed: int = 0, first_step: int = 0, meta: bool = True) -> None:
    rng = random.Random(seed)
    writer = EventWriter(path) if meta else None
    handle = None
    if writer is None:
        handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed below

    def emit(kind: str, **fields: object) -> None:
        if writer is not None:
            writer.write(kind, **fields)
        else:
            handle.write(json.dumps({"v": 1, "kind": kind, "time": 0.0, **fields}, separators=(",", ":")) + "\n")

    if meta:
        emit(
            "meta",
            rank=None,
            gradprobe="0.1.0",
            torch="2.13.0",
            model="Model",
            settings={"every": 50, "fix": "off"},
            layers=[{"name": "rnn", "mode": "LSTM", "tracks": ["rnn.l0", "rnn.l1"]}],
        )
    for step in range(first_step, first_step + steps):
        norms = {name: rng.lognormvariate(0, 0.3) for name in PARAMS}
        gates = {name: {g: rng.random() for g in GATES} for name in PARAMS[:2] + PARAMS[4:6]}
        emit(
            "step",
            step=step,
            loss=1 / (1 + step / 1000),
            grad_norm=math.sqrt(sum(v * v for v in norms.values())),
            params=norms,
            gates=gates,
            nonfinite=None,
        )
        if step % 10 == 0:
            for track in ("rnn.l0", "rnn.l1"):
                emit(
                    "saturation",
                    step=step,
                    layer=track,
                    mode="LSTM",
                    fractions={g: 0.1 for g in GATES},
                    low={"forget": 0.01},
                    dead_units=None,
                    units=256,
                    samples=400,
                    deep=False,
                )
        if step % 50 == 0:
            for track in ("rnn.l0", "rnn.l1"):
                emit(
                    "deep",
                    step=step,
                    layer=track,
                    module="rnn",
                    mode="LSTM",
                    seq_len=100,
                    batch=32,
                    grad_norms=[0.9**k for k in range(100)][::-1],
                    profile=[0.9**k for k in range(100)],
                    jacobian_norms=[0.9 + 0.01 * rng.random() for _ in range(100)],
                    rate=math.log(0.9),
                    horizon=65.6,
                    epsilon=1e-3,
                    chained=True,
                )
    if writer is not None:
        writer.close()
    else:
        handle.close()


def plain_json(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        for line in handle:
            json.loads(line)
            count += 1
    return count


def report(path: Path, charts: bool = False) -> str:
    """What ``gradprobe report`` does: the text report (no chart series), or with ``charts`` the HTML report's reading."""
    from gradprobe.report import summarize_logs
    from gradprobe.report.text import render_text

    return render_text(summarize_logs([path], config={}, charts=charts))


def parser_name() -> str:
    from gradprobe import fast_lines

    return "msgspec (gradprobe[fast])" if fast_lines.msgspec is not None else "standard json (no gradprobe[fast])"


def peak_rss_mb(path: Path) -> float:
    code = (
        "import resource, sys; sys.path.insert(0, sys.argv[2]); import report_speed as r; r.report(__import__('pathlib').Path(sys.argv[1]));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(Path(__file__).parent)], check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def grow(path: Path, target_bytes: int, chunk_steps: int) -> int:
    steps = 0
    while path.stat().st_size < target_bytes:
        write_log(path, chunk_steps, seed=steps, first_step=10**7 + steps, meta=False)
        steps += chunk_steps
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--no-fast", action="store_true", help="read as without gradprobe[fast] (the standard json parser)"
    )
    parser.add_argument("--memory-gb", type=float, default=0.0, help="also measure peak memory on a log of this size")
    args = parser.parse_args(argv)
    if args.no_fast:
        from gradprobe import fast_lines

        fast_lines.msgspec = None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.log"
        write_log(path, args.steps)
        size = os.path.getsize(path)
        cases = (
            ("json.loads", plain_json),
            ("gradprobe report", report),
            ("... with charts", lambda p: report(p, charts=True)),
        )
        times: dict[str, list[float]] = {name: [] for name, _ in cases}
        report(path)  # imports and plugin loading once, outside the timings
        for _ in range(args.repeats):  # interleaved: each repeat times every case once
            for name, fn in cases:
                start = time.perf_counter()
                fn(path)
                times[name].append(time.perf_counter() - start)
        print(f"log: {args.steps} steps, {size / 1e6:.0f} MB; {args.repeats} interleaved repeats; {parser_name()}")
        for name, seconds in times.items():
            print(
                f"  {name:<18}{statistics.median(seconds):7.2f} s  {size / 1e6 / statistics.median(seconds):6.0f} MB/s (median)"
            )
        for name in ("gradprobe report", "... with charts"):
            ratios = sorted(t / base for t, base in zip(times[name], times["json.loads"]))
            print(
                f"  ratio {name} / json.loads: min {ratios[0]:.2f}x  median {statistics.median(ratios):.2f}x  max {ratios[-1]:.2f}x"
            )
        if args.memory_gb:
            small = Path(folder) / "small.log"
            write_log(small, args.steps)
            grow(small, int(args.memory_gb * 1e8), 20_000)
            grow(path, int(args.memory_gb * 1e9), 20_000)
            print(
                f"peak memory of the report: {peak_rss_mb(small):.0f} MB for {small.stat().st_size / 1e9:.2f} GB, "
                f"{peak_rss_mb(path):.0f} MB for {path.stat().st_size / 1e9:.2f} GB"
            )


if __name__ == "__main__":
    main()
