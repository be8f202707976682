"""Time-series prediction with LSTMCells and L-BFGS, after PyTorch's time_sequence_prediction example.

Two stacked ``LSTMCell``s in float64 read noisy sine waves step by step and
predict the next value at every step; L-BFGS minimizes the MSE with a
closure. ``probe.step(loss)`` sits in the closure, after ``backward``.

Variants:
    healthy: clean waves.
    healthy-hooks: the same with attach(optimizer=opt) and no probe.step: one probe step per opt.step(closure).
    nan-input (broken, GP103): one NaN in the training data.

    python benchmarks/corpus/timeseries_lbfgs.py --variant healthy --steps 8
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "healthy-hooks": None, "nan-input": "GP103"}
QUICK_STEPS = 3  # the test's reduced run
STEPS = 8  # L-BFGS steps (each runs the closure up to 10 times)
LENGTH = 100


def waves(generator: torch.Generator, count: int = 24) -> Tensor:
    shift = torch.randint(-40, 40, (count, 1), generator=generator).double()
    t = torch.arange(LENGTH + 1).double().unsqueeze(0)
    return torch.sin((t + shift) / 6.0) + 0.01 * torch.randn(
        count, LENGTH + 1, generator=generator, dtype=torch.float64
    )


class Sequence(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm1 = nn.LSTMCell(1, hidden)
        self.lstm2 = nn.LSTMCell(hidden, hidden)
        self.linear = nn.Linear(hidden, 1)
        self.hidden = hidden

    def forward(self, x: Tensor) -> Tensor:
        h1 = c1 = h2 = c2 = x.new_zeros(x.size(0), self.hidden)
        outputs = []
        for x_t in x.split(1, dim=1):
            h1, c1 = self.lstm1(x_t, (h1, c1))
            h2, c2 = self.lstm2(h1, (h2, c2))
            outputs.append(self.linear(h2))
        return torch.cat(outputs, dim=1)


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 10) -> common.RunResult:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    data = waves(generator)
    if variant == "nan-input":
        data[3, 40] = math.nan
    x, y = data[:, :-1], data[:, 1:]
    model = Sequence().double()
    crit = nn.MSELoss()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.8, max_iter=10)
    result = common.RunResult("timeseries_lbfgs", variant, VARIANTS[variant])
    hooks = variant == "healthy-hooks"  # attach(optimizer=opt): one probe step per opt.step(closure)
    with gradprobe.attach(model, log=log, every=every, config={}, optimizer=opt if hooks else None) as probe:

        def closure() -> Tensor:
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            if not hooks:
                probe.step(loss)
            result.losses.append(loss.item())
            return loss

        for _ in range(steps):
            opt.step(closure)
    result.findings, result.steps = probe.findings, (probe.step_index if hooks else len(result.losses))
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
