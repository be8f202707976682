"""Character-level LSTM language model with Adam, truncated BPTT over 64 characters, carried state.

Variants:
    healthy: Adam lr 3e-3, clip_grad_norm_ 1.0 before probe.step.
    sgd-lr-50 (broken, GP403): plain SGD at lr 50 and no clipping: the loss climbs away.

    python benchmarks/corpus/char_lm.py --variant healthy --steps 300
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "sgd-lr-50": "GP403"}
QUICK_STEPS = 100  # the test's reduced run
STEPS = 300
WINDOW = 64


class CharLM(nn.Module):
    def __init__(self, vocab: int, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = nn.LSTM(32, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, state = self.rnn(self.embed(x), state)
        return self.head(out), state


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 50) -> common.RunResult:
    torch.manual_seed(0)
    data, alphabet = common.chars()
    streams = common.stream_batches(data, batch=16)
    model = CharLM(len(alphabet))
    broken = variant == "sgd-lr-50"
    opt = torch.optim.SGD(model.parameters(), lr=50.0) if broken else torch.optim.Adam(model.parameters(), lr=3e-3)
    crit = nn.CrossEntropyLoss()
    result = common.RunResult("char_lm", variant, VARIANTS[variant])
    state = None
    with gradprobe.attach(model, log=log, every=every, truncation=WINDOW, config={}) as probe:
        for _, (x, y) in zip(range(steps), common.bptt_windows(streams, WINDOW)):
            logits, state = model(x, state)
            loss = crit(logits.reshape(-1, len(alphabet)), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            if not broken:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            probe.step(loss)
            opt.step()
            state = tuple(s.detach() for s in state)
            result.losses.append(loss.item())
    result.findings, result.steps = probe.findings, steps
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
