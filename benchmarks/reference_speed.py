"""Forward+backward time of the reference LSTM against torch.nn.LSTM.

Configuration from the foundation issue: B=32, T=100, H=256, CPU, float32.
Prints the median time of each and their ratio (target: <= 1.3x).

    python benchmarks/reference_speed.py [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_medians

from gradprobe.reference import from_torch


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    fused = nn.LSTM(args.hidden, args.hidden)
    reference = from_torch(fused)
    x = torch.randn(args.steps, args.batch, args.hidden)

    def train_step(module: nn.Module) -> None:
        out, _ = module(x)
        out.sum().backward()
        module.zero_grad(set_to_none=True)

    medians = interleaved_medians(
        {"torch.nn.LSTM": lambda: train_step(fused), "reference LSTM": lambda: train_step(reference)},
        repeats=args.repeats,
    )
    ratio = medians["reference LSTM"] / medians["torch.nn.LSTM"]
    print(f"B={args.batch} T={args.steps} H={args.hidden} threads={torch.get_num_threads()} torch={torch.__version__}")
    for name, seconds in medians.items():
        print(f"  {name:<16} {seconds * 1e3:8.1f} ms / forward+backward")
    print(f"  ratio reference / torch.nn = {ratio:.2f}x (target <= 1.30x)")
    return ratio


if __name__ == "__main__":
    main()
