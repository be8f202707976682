"""Does the information-flow regularizer help a tanh RNN learn a long dependency? (Pascanu et al. 2013)

The adding problem (see ``gradprobe.demo``) at T steps with a tanh RNN trained by SGD, three ways, same
seed and data: plain; norm clipping at 1; norm clipping at 1 plus ``FlowRegularizer(weight=4)``. Prints the
test MSE every ``--report`` steps (0.167 is the score of always predicting the mean) and the final table.

    python benchmarks/flow_regularizer.py [--seq-len 50] [--steps 3000] [--hidden 50]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import gradprobe
from gradprobe.demo import BASELINE_MSE, make_batch


class TanhAdder(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.cell = nn.RNNCell(2, hidden)
        self.head = nn.Linear(hidden, 1)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[1], self.hidden, requires_grad=True)
        for x_t in x:
            h = self.cell(x_t, h)
        return self.head(h)


def run(kind: str, args: argparse.Namespace) -> list[tuple[int, float]]:
    torch.manual_seed(args.seed)
    model = TanhAdder(args.hidden)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    reg = gradprobe.fixes.FlowRegularizer(model, weight=args.weight, cells=["cell"]) if kind == "clip+omega" else None
    data = torch.Generator().manual_seed(args.seed + 1)
    test_x, test_y = make_batch(1000, args.seq_len, torch.Generator().manual_seed(12345))
    curve = []
    for step in range(1, args.steps + 1):
        x, y = make_batch(args.batch, args.seq_len, data)
        loss = nn.functional.mse_loss(model(x), y)
        total = loss + reg(loss) if reg is not None else loss
        opt.zero_grad()
        total.backward()
        if kind != "plain":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.report == 0:
            with torch.no_grad():
                mse = float(nn.functional.mse_loss(model(test_x), test_y))
            curve.append((step, mse))
            print(f"  {kind:<11} step {step:>6}  test MSE {mse:.4f}", flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--hidden", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight", type=float, default=4.0)
    parser.add_argument("--report", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="*", default=["plain", "clip", "clip+omega"])
    args = parser.parse_args()
    results = {}
    for kind in args.kinds:
        start = time.perf_counter()
        curve = run(kind, args)
        results[kind] = (curve[-1][1], min(m for _, m in curve), time.perf_counter() - start)
    print(f"\nadding problem T={args.seq_len}, tanh RNN H={args.hidden}, SGD lr {args.lr} momentum 0.9, {args.steps} steps "
          f"(mean predictor: {BASELINE_MSE:.3f})")
    print("| training | final test MSE | best | time |")
    print("|---|---|---|---|")
    for kind, (final, best, seconds) in results.items():
        print(f"| {kind} | {final:.4f} | {best:.4f} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
