"""Sequence classifier: a packed bidirectional LSTM over variable-length token sequences.

The task: sequences of 8 to 40 tokens over a 50-word vocabulary; the label is
which of two marker words occurs more often (a sentiment-style bag-of-cues
task). The classifier reads the final states of both directions.

Variants:
    healthy: packed, bidirectional, Adam, batches of 32.
    long-dependency (broken, GP101): a unidirectional default LSTM must
        classify 200-step sequences by their first token; the loss reads
        only the last state, and the early steps get no gradient.

    python benchmarks/corpus/bidir_classifier.py --variant healthy --steps 300
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "long-dependency": "GP101"}
QUICK_STEPS = 120  # the test's reduced run
STEPS = 300
VOCAB = 50


def cue_batch(generator: torch.Generator, batch: int = 32) -> tuple[list[Tensor], Tensor]:
    """Sequences of 8-40 tokens; label 1 when token 1 occurs more often than token 2."""
    seqs, labels = [], []
    for _ in range(batch):
        length = int(torch.randint(8, 41, (), generator=generator))
        seq = torch.randint(3, VOCAB, (length,), generator=generator)
        label = int(torch.randint(0, 2, (), generator=generator))
        count = int(torch.randint(1, 4, (), generator=generator))
        where = torch.randperm(length, generator=generator)[: 2 * count + 1]
        seq[where[: count + 1]] = 1 if label else 2
        seq[where[count + 1 :]] = 2 if label else 1
        seqs.append(seq)
        labels.append(label)
    return seqs, torch.tensor(labels)


def first_token_batch(generator: torch.Generator, batch: int = 32, length: int = 200) -> tuple[list[Tensor], Tensor]:
    """200-step sequences whose label is their first token (1 or 2); the rest is noise."""
    labels = torch.randint(0, 2, (batch,), generator=generator)
    seq = torch.randint(3, VOCAB, (batch, length), generator=generator)
    seq[:, 0] = labels + 1
    return list(seq), labels


class Classifier(nn.Module):
    def __init__(self, bidirectional: bool = True, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32, padding_idx=0)
        self.rnn = nn.LSTM(32, hidden, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 2)

    def forward(self, seqs: list[Tensor]) -> Tensor:
        lengths = torch.tensor([len(s) for s in seqs])
        padded = pad_sequence(seqs, batch_first=True)
        packed = pack_padded_sequence(self.embed(padded), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        final = torch.cat([h[-2], h[-1]], dim=-1) if self.rnn.bidirectional else h[-1]
        return self.head(final)


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 50) -> common.RunResult:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    broken = variant == "long-dependency"
    model = Classifier(bidirectional=not broken)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    crit = nn.CrossEntropyLoss()
    make = first_token_batch if broken else cue_batch
    result = common.RunResult("bidir_classifier", variant, VARIANTS[variant])
    with gradprobe.attach(model, log=log, every=every, config={}) as probe:
        for _ in range(steps):
            seqs, labels = make(generator)
            loss = crit(model(seqs), labels)
            opt.zero_grad()
            loss.backward()
            probe.step(loss)
            opt.step()
            result.losses.append(loss.item())
    result.findings, result.steps = probe.findings, steps
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
