"""Seq2seq: a GRU encoder and a GRUCell decoder called once per output token (teacher forcing).

The task: reverse a sequence of 5 to 10 digits. The encoder's final state
starts the decoder, which is stepped token by token in a Python loop, as in
the PyTorch seq2seq tutorial.

Variants:
    healthy: default init, Adam.
    encoder-spectral-6 (broken, GP201): the encoder's recurrent weights scaled
        x6: the candidate path amplifies every step.

    python benchmarks/corpus/seq2seq.py --variant healthy --steps 400
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "encoder-spectral-6": "GP201"}
QUICK_STEPS = 100  # the test's reduced run
STEPS = 400
BOS, DIGITS = 10, 10


def reverse_batch(generator: torch.Generator, batch: int = 32) -> tuple[Tensor, Tensor]:
    length = int(torch.randint(5, 11, (), generator=generator))
    src = torch.randint(0, DIGITS, (length, batch), generator=generator)
    return src, src.flip(0)


class Seq2Seq(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(DIGITS, 16)
        self.tgt_embed = nn.Embedding(DIGITS + 1, 16)
        self.encoder = nn.GRU(16, hidden)
        self.decoder = nn.GRUCell(16, hidden)
        self.out = nn.Linear(hidden, DIGITS)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        _, h = self.encoder(self.src_embed(src))
        state = h[0]
        previous = torch.full_like(tgt[0], BOS)
        logits = []
        for t in range(tgt.size(0)):  # the decoder is called once per output token
            state = self.decoder(self.tgt_embed(previous), state)
            logits.append(self.out(state))
            previous = tgt[t]  # teacher forcing
        return torch.stack(logits)


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 50) -> common.RunResult:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2)
    model = Seq2Seq()
    if variant == "encoder-spectral-6":
        with torch.no_grad():
            model.encoder.weight_hh_l0.mul_(6.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    crit = nn.CrossEntropyLoss()
    result = common.RunResult("seq2seq", variant, VARIANTS[variant])
    with gradprobe.attach(model, log=log, every=every, config={}) as probe:
        for _ in range(steps):
            src, tgt = reverse_batch(generator)
            loss = crit(model(src, tgt).reshape(-1, DIGITS), tgt.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            probe.step(loss)
            opt.step()
            result.losses.append(loss.item())
    result.findings, result.steps = probe.findings, steps
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
