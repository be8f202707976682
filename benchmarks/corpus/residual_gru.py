"""A stacked residual GRU: three single-layer GRUs with skip connections, on a moving-sum regression.

Target at each step: the sum of the last 5 inputs (one channel of 3).

Variants:
    healthy: GRU layers, residual adds, Adam.
    relu-bias-2 (broken, GP302): the same stack of ReLU RNN layers with input
        biases at -2: most units never fire.

    python benchmarks/corpus/residual_gru.py --variant healthy --steps 300
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "relu-bias-2": "GP302"}
QUICK_STEPS = 100  # the test's reduced run
STEPS = 300
WIDTH, LENGTH, SPAN = 48, 50, 5


class ResidualStack(nn.Module):
    def __init__(self, relu: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(3, WIDTH)
        make = (
            (lambda: nn.RNN(WIDTH, WIDTH, nonlinearity="relu", batch_first=True))
            if relu
            else (lambda: nn.GRU(WIDTH, WIDTH, batch_first=True))
        )
        self.layers = nn.ModuleList(make() for _ in range(3))
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for layer in self.layers:
            out, _ = layer(h)
            h = h + out  # residual connection across the stack
        return self.head(h).squeeze(-1)


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 50) -> common.RunResult:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(5)
    broken = variant == "relu-bias-2"
    model = ResidualStack(relu=broken)
    if broken:
        with torch.no_grad():
            for layer in model.layers:
                layer.bias_ih_l0.fill_(-2.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    kernel = torch.ones(1, 1, SPAN)
    result = common.RunResult("residual_gru", variant, VARIANTS[variant])
    with gradprobe.attach(model, log=log, every=every, config={}) as probe:
        for _ in range(steps):
            x = torch.randn(32, LENGTH, 3, generator=generator)
            target = nn.functional.conv1d(nn.functional.pad(x[:, :, :1].transpose(1, 2), (SPAN - 1, 0)), kernel)[:, 0]
            loss = ((model(x) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            probe.step(loss)
            opt.step()
            result.losses.append(loss.item())
    result.findings, result.steps = probe.findings, steps
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
