"""Does the information-flow regularizer let a tanh RNN learn a long dependency? (Pascanu et al. 2013)

Tasks, both with the answer at the last step only:
- ``sign`` (default): the sign of the first input, read after T-1 steps of noise (N(0, 0.5^2)); binary
  cross-entropy, chance is 50% accuracy.
- ``adding``: the adding problem of ``gradprobe.demo`` (MSE; the mean predictor scores 0.167).

A tanh ``RNNCell`` (H=32) trained by SGD with momentum 0.9, three ways from the same seed and data:
plain; norm clipping at 1; norm clipping at 1 plus ``FlowRegularizer``. Prints the test score every
``--report`` steps and a table.

    python benchmarks/flow_regularizer.py [--task sign] [--seq-len 50] [--steps 3000] [--lr 0.01] [--weight 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import gradprobe
from gradprobe.demo import BASELINE_MSE, make_batch


def sign_batch(batch: int, seq_len: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = 0.5 * torch.randn(seq_len, batch, 1, generator=generator)
    y = (torch.rand(batch, generator=generator) < 0.5).float()
    x[0, :, 0] = 2 * y - 1
    return x, y


class TanhRNN(nn.Module):
    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.cell = nn.RNNCell(inputs, hidden)
        self.head = nn.Linear(hidden, 1)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(x.shape[1], self.hidden, requires_grad=True)  # in the graph: step 1 is regularized too
        for x_t in x:
            h = self.cell(x_t, h)
        return self.head(h).squeeze(1)


def run(kind: str, args: argparse.Namespace) -> list[tuple[int, float, float | None]]:
    torch.manual_seed(args.seed)
    sign = args.task == "sign"
    model = TanhRNN(1 if sign else 2, args.hidden)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    reg = gradprobe.fixes.FlowRegularizer(model, weight=args.weight, cells=["cell"]) if kind == "clip+omega" else None
    make = sign_batch if sign else make_batch
    data = torch.Generator().manual_seed(args.seed + 1)
    test_x, test_y = make(1000, args.seq_len, torch.Generator().manual_seed(12345))
    test_y = test_y.reshape(-1)

    def loss_of(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(out, y) if sign else nn.functional.mse_loss(out, y)

    curve = []
    for step in range(1, args.steps + 1):
        x, y = make(args.batch, args.seq_len, data)
        loss = loss_of(model(x), y.reshape(-1))
        total = loss + reg(loss) if reg is not None else loss
        opt.zero_grad()
        total.backward()
        if kind != "plain":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.report == 0:
            with torch.no_grad():
                out = model(test_x)
                score = float(((out > 0).float() == test_y).float().mean()) if sign else float(loss_of(out, test_y))
            curve.append((step, score, reg.last if reg is not None else None))
            omega = f"  Omega {reg.last:.4f}" if reg is not None and reg.last is not None else ""
            print(f"  {kind:<11} step {step:>6}  test {'accuracy' if sign else 'MSE'} {score:.4f}{omega}", flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["sign", "adding"], default="sign")
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--report", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="*", default=["plain", "clip", "clip+omega"])
    args = parser.parse_args()
    results = {}
    for kind in args.kinds:
        start = time.perf_counter()
        curve = run(kind, args)
        results[kind] = (curve, time.perf_counter() - start)
    score = "accuracy (chance 0.5)" if args.task == "sign" else f"MSE (mean predictor {BASELINE_MSE:.3f})"
    print(
        f"\n{args.task} task, T={args.seq_len}, tanh RNNCell H={args.hidden}, SGD lr {args.lr} momentum 0.9, "
        f"{args.steps} steps, Omega weight {args.weight}; test {score}"
    )
    steps = [step for step, _, _ in next(iter(results.values()))[0]]
    print("| training | " + " | ".join(f"step {s}" for s in steps) + " | time |")
    print("|---|" + "---|" * len(steps) + "---|")
    for kind, (curve, seconds) in results.items():
        print(f"| {kind} | " + " | ".join(f"{value:.3f}" for _, value, _ in curve) + f" | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
