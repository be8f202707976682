"""A deep-probe step against a plain training step, over layer kinds, sizes and sequence lengths.

Each configuration trains two identical models side by side (B=32, SGD, MSE on
a linear head): one plain, one probed with ``every=1`` (every step deep). Plain
and deep steps run interleaved, ``--repeats`` pairs after a warm-up, and the
table gives min/median/max of the per-pair ratio deep/plain. ``--memory`` also
measures, in a fresh process per configuration, the peak resident memory of a
plain step and the extra peak of a deep step.

    python benchmarks/deep_step.py [--threads 1] [--repeats 5] [--grid default|quick|full] [--memory] [--lyapunov-k 4]
                                   [--compare-k 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import make_step

import gradprobe

KINDS = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
BATCH = 32


class Model(nn.Module):
    def __init__(self, kind: str, hidden: int, layers: int, bidirectional: bool) -> None:
        super().__init__()
        self.rnn = KINDS[kind](hidden, hidden, num_layers=layers, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def grid(name: str) -> list[tuple[str, int, int, int, bool]]:
    """(kind, H, T, layers, bidirectional) per row."""
    if name == "quick":
        return [("LSTM", 64, 100, 1, False), ("LSTM", 256, 100, 1, False)]
    rows = []
    for kind in KINDS:
        rows += [(kind, hidden, 100, 1, False) for hidden in (64, 128, 256, 1024)]
        rows += [(kind, 128, steps, 1, False) for steps in (25, 400, 1000)]
        rows += [(kind, 128, 100, 2, False), (kind, 128, 100, 1, True)]
    if name == "full":
        rows += [(kind, hidden, steps, 1, False) for kind in KINDS for hidden in (64, 256) for steps in (25, 400, 1000)]
    return rows


def ratios(
    kind: str, hidden: int, steps: int, layers: int, bidirectional: bool, repeats: int, ks: tuple[int, ...]
) -> tuple[dict[int, list[float]], float]:
    """Per-round deep/plain ratios for each ``lyapunov_k`` in ``ks`` (one probed model each, all stepped in
    every round right after one plain step), and the median plain step in seconds."""
    torch.manual_seed(0)
    x = torch.randn(steps, BATCH, hidden)
    y = torch.randn(steps, BATCH, 1)
    plain_model = Model(kind, hidden, layers, bidirectional)
    plain = make_step(plain_model, x, y, None)
    probed = {}
    for k in ks:
        model = Model(kind, hidden, layers, bidirectional)
        model.load_state_dict(plain_model.state_dict())
        probe = gradprobe.attach(model, every=1, config={}, lyapunov_k=k)
        probed[k] = (make_step(model, x, y, probe), probe)
    for _ in range(2):  # warm-up, including the first deep step's one-off costs
        plain()
        for deep, _probe in probed.values():
            deep()
    by_k: dict[int, list[float]] = {k: [] for k in ks}
    plain_times = []
    for _ in range(repeats):
        for k, (deep, _probe) in probed.items():
            start = time.perf_counter()
            plain()
            middle = time.perf_counter()
            deep()
            end = time.perf_counter()
            by_k[k].append((end - middle) / (middle - start))
            plain_times.append(middle - start)
    for _deep, probe in probed.values():
        probe.close()
        assert probe.error is None, probe.error
    return by_k, statistics.median(plain_times)


def memory(kind: str, hidden: int, steps: int, layers: int, bidirectional: bool) -> dict[str, float]:
    """Peak RSS (MB) after plain steps, and after one deep step on top, in this (fresh) process."""
    torch.manual_seed(0)
    x = torch.randn(steps, BATCH, hidden)
    y = torch.randn(steps, BATCH, 1)
    model = Model(kind, hidden, layers, bidirectional)
    probe = gradprobe.attach(model, every=10**9, saturation_every=0, config={})
    probe.step_index = 1  # skip the deep step 0: plain steps first
    probe._capture.start_step("off")
    step = make_step(model, x, y, probe)
    step()
    step()
    probe.schedule.every = 1  # the step after the next one is deep
    step()
    plain_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()
    deep_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert probe.layers, "the last step was not a deep one"
    probe.close()
    return {"plain_peak_mb": plain_peak, "deep_extra_mb": deep_peak - plain_peak}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grid", choices=("quick", "default", "full"), default="default")
    parser.add_argument("--memory", action="store_true", help="also measure the deep step's extra peak memory")
    parser.add_argument(
        "--lyapunov-k", type=int, default=4, help="Lyapunov exponents per track (the probe's default: 4; 0: off)"
    )
    parser.add_argument(
        "--compare-k",
        type=int,
        help="also a probe with this lyapunov_k, stepped in the same rounds: the spectrum's cost per row",
    )
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_of:
        print(json.dumps(memory(*json.loads(args.memory_of))))
        return
    print(
        f"B={BATCH}, threads={torch.get_num_threads()}, torch {torch.__version__}, {args.repeats} interleaved pairs, "
        f"lyapunov_k={args.lyapunov_k}\n"
    )
    compare = f" median with lyapunov_k={args.compare_k} |" if args.compare_k is not None else ""
    print(
        "| layer | H | T | plain step | deep / plain: min | median | max |"
        + compare
        + (" plain peak | deep extra |" if args.memory else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if compare else "") + ("---|---|" if args.memory else ""))
    ks = (args.lyapunov_k,) if args.compare_k is None else (args.lyapunov_k, args.compare_k)
    for kind, hidden, steps, layers, bidirectional in grid(args.grid):
        by_k, plain = ratios(kind, hidden, steps, layers, bidirectional, args.repeats, ks)
        pairs = by_k[args.lyapunov_k]
        label = kind + (f" x{layers}" if layers > 1 else "") + (" bi" if bidirectional else "")
        row = f"| {label} | {hidden} | {steps} | {plain * 1e3:.1f} ms | {min(pairs):.2f}x | {statistics.median(pairs):.2f}x | {max(pairs):.2f}x |"
        if args.compare_k is not None:
            row += f" {statistics.median(by_k[args.compare_k]):.2f}x |"
        if args.memory:
            spec = json.dumps([kind, hidden, steps, layers, bidirectional])
            out = subprocess.run(
                [sys.executable, __file__, "--threads", str(args.threads), "--memory-of", spec],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            mem = json.loads(out.strip().splitlines()[-1])
            row += f" {mem['plain_peak_mb']:.0f} MB | +{mem['deep_extra_mb']:.0f} MB |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
