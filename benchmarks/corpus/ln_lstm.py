"""A layer-norm LSTM written as one module that loops over time inside its ``forward`` (the shape of torchaudio's
RNN-T predictor ``_CustomLSTM``), named with ``cells=[...]``, on a delayed-recall regression.

Target at each step t >= DELAY: the input of step t - DELAY (one channel of 4); the user knows the task needs
DELAY steps of memory and declares it (``dependency_length=DELAY``).

Variants:
    healthy: forget bias +1, Adam 3e-3.
    forget-bias-3 (broken, GP101): the forget-gate bias at -3: the gradient horizon (~7 steps) falls short
        of the declared need, and the loss does not move.
    whh-x4-lr (broken, GP403): recurrent weights x4 and plain SGD at lr 1: the loss climbs away to Inf/NaN.

    python benchmarks/corpus/ln_lstm.py --variant healthy --steps 300
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "forget-bias-3": "GP101", "whh-x4-lr": "GP403"}
QUICK_STEPS = 300  # the test runs it in full (~3 s): the healthy run needs them to learn the recall
STEPS = 300
HIDDEN, LENGTH, DELAY, BATCH = 32, 40, 12, 16


class LayerNormLSTM(nn.Module):
    """One module, one call per sequence: the time loop is inside (no per-step module call to hook)."""

    def __init__(self, inputs: int, hidden: int, forget_bias: float) -> None:
        super().__init__()
        self.x2g = nn.Linear(inputs, 4 * hidden)
        self.p2g = nn.Linear(hidden, 4 * hidden, bias=False)
        self.g_norm = nn.LayerNorm(4 * hidden)
        self.c_norm = nn.LayerNorm(hidden)
        self.hidden = hidden
        with torch.no_grad():
            self.x2g.bias[hidden : 2 * hidden] = forget_bias

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        gated = self.x2g(x)
        batch = x.shape[1]
        h, c = state if state is not None else (x.new_zeros(batch, self.hidden), x.new_zeros(batch, self.hidden))
        out = []
        for g in gated:
            i, f, z, o = self.g_norm(g + self.p2g(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
            h = torch.sigmoid(o) * torch.tanh(self.c_norm(c))
            out.append(h)
        return torch.stack(out), (h, c)


class Recall(nn.Module):
    def __init__(self, forget_bias: float) -> None:
        super().__init__()
        self.rnn = LayerNormLSTM(4, HIDDEN, forget_bias)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out).squeeze(-1)


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 20) -> common.RunResult:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(11)
    model = Recall(forget_bias=-3.0 if variant == "forget-bias-3" else 1.0)
    opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    if variant == "whh-x4-lr":
        with torch.no_grad():
            model.rnn.p2g.weight.mul_(4.0)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
    result = common.RunResult("ln_lstm", variant, VARIANTS[variant])
    with gradprobe.attach(
        model, log=log, every=every, cells=["rnn"], dependency_length=DELAY, config={}, optimizer=opt
    ) as probe:
        for _ in range(steps):
            x = torch.randn(LENGTH, BATCH, 4, generator=generator)
            loss = (model(x)[DELAY:] - x[:-DELAY, :, 0]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            result.losses.append(loss.item())
    result.findings, result.steps = probe.findings, steps
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
