"""An LSTM with ``proj_size`` on a delayed-recall task: output the input seen 8 steps earlier.

Per-step MSE from step 8 on; sequences of 40 steps of 2 random channels.

Variants:
    healthy: default init, Adam, dependency_length=8 declared.
    input-x50 (broken, GP301): inputs arrive 50x too large: the gates saturate from the first step.

    python benchmarks/corpus/lstm_proj.py --variant healthy --steps 300
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "input-x50": "GP301"}
QUICK_STEPS = 120  # the test's reduced run
STEPS = 400
DELAY, LENGTH, CHANNELS = 8, 40, 2


class Recall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(CHANNELS, 64, proj_size=32, batch_first=True)
        self.head = nn.Linear(32, CHANNELS)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out)


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 50) -> common.RunResult:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(4)
    model = Recall()
    scale = 50.0 if variant == "input-x50" else 1.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    result = common.RunResult("lstm_proj", variant, VARIANTS[variant])
    with gradprobe.attach(model, log=log, every=every, dependency_length=DELAY, config={}) as probe:
        for _ in range(steps):
            x = torch.randn(32, LENGTH, CHANNELS, generator=generator)
            prediction = model(x * scale)
            loss = ((prediction[:, DELAY:] - x[:, :-DELAY]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            probe.step(loss)
            opt.step()
            result.losses.append(loss.item())
    result.findings, result.steps = probe.findings, steps
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
