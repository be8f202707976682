"""The adding problem (Hochreiter & Schmidhuber 1997): flag a failing LSTM, fix it, watch it learn.

Each sequence has two channels: random values in [0, 1] and a marker that is 1
at two positions (one in each half). The target is the sum of the two marked
values. Predicting the mean (1.0) scores MSE = 2/12 = 0.167; learning requires
carrying a value across up to ``seq_len`` steps.

Run 1 trains an LSTM whose forget-gate bias starts at -3 (the cell forgets 95%
per step) under ``gradprobe.attach``: the probe flags it. Run 2 starts from the
same weights, applies ``gradprobe.fixes.apply(model, findings)`` and trains
with ``fix="auto"``. Both runs' test MSE is printed against the baseline.

    python examples/adding_problem.py [--steps 600] [--seq-len 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

import gradprobe
from gradprobe import fixes
from gradprobe.demo import BASELINE_MSE, Adder, TrainingSetup, train


def broken_model(hidden: int, seed: int) -> Adder:
    """Forget-gate bias -3: a plausible init mistake that starves long-range gradients."""
    torch.manual_seed(seed)
    model = Adder(hidden)
    with torch.no_grad():
        model.rnn.bias_ih_l0[hidden : 2 * hidden] = -3.0
        model.rnn.bias_hh_l0[hidden : 2 * hidden] = 0.0
    return model


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for broken.log and fixed.log")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)  # vanishing gradients are denormal floats: slow on CPUs
    args.out.mkdir(parents=True, exist_ok=True)

    print(
        f"adding problem: T={args.seq_len}, hidden {args.hidden}, {args.steps} steps of {args.batch}; "
        f"baseline MSE {BASELINE_MSE:.3f}"
    )
    model = broken_model(args.hidden, args.seed)
    fixed = copy.deepcopy(model)

    setup = TrainingSetup(args.steps, args.seq_len, args.batch, args.lr, args.seed)
    start = time.perf_counter()
    with gradprobe.attach(model, log=args.out / "broken.log", every=args.every, config={}) as probe:
        broken_mse = train(model, setup, probe)
    print(
        f"\nrun 1 (forget bias -3): test MSE {broken_mse:.4f} in {time.perf_counter() - start:.0f}s; gradprobe found:"
    )
    for finding in probe.findings:
        print(f"  {finding}")
        if finding.fix:
            print(f"      fix: {finding.fix}")

    print("\napplying gradprobe.fixes.apply(model, findings) to the same initial weights:")
    for action in fixes.apply(fixed, probe.findings):
        print(f"  {action}")
    start = time.perf_counter()
    with gradprobe.attach(fixed, log=args.out / "fixed.log", every=args.every, fix="auto", config={}) as probe:
        fixed_mse = train(fixed, setup, probe)
    remaining = [f for f in probe.findings if f.severity != "info"]
    print(
        f"\nrun 2 (fixed): test MSE {fixed_mse:.4f} in {time.perf_counter() - start:.0f}s; "
        f"{len(remaining)} warnings/errors left"
    )
    for finding in remaining:
        print(f"  {finding}")

    print(f"\n{'run':<24}{'test MSE':>10}{'vs baseline':>14}")
    for name, mse in (("1: forget bias -3", broken_mse), ("2: gradprobe fixes", fixed_mse)):
        print(f"{name:<24}{mse:>10.4f}{mse / BASELINE_MSE:>13.0%}")
    return {"broken": broken_mse, "fixed": fixed_mse}


if __name__ == "__main__":
    main()
