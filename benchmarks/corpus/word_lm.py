"""Word-level language model, in the manner of PyTorch's word_language_model example.

Two stacked layers (LSTM, GRU or tanh RNN), tied to nothing, trained with SGD at
lr 20 over truncated-BPTT windows of 35 words, the hidden state carried from one
window to the next and detached, gradients clipped at 0.25.

Variants:
    lstm (healthy): probe.step after clip_grad_norm_ (the probe sees clipped gradients).
    gru (healthy): probe.step before clipping, the clip declared with grad_clip=.
    lstm-hooks (healthy): torch.optim.SGD and attach(optimizer=opt), nothing declared and no
        probe.step: the probe sees the clipping (0.25) and detects the truncation window (35).
    lstm-forget-bias (broken, GP202): forget-gate bias -3: the cells forget at once.
    rnn-lr20 (broken, GP403): a tanh RNN at the same lr 20 diverges.

    python benchmarks/corpus/word_lm.py --variant gru --steps 400
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"lstm": None, "gru": None, "lstm-hooks": None, "lstm-forget-bias": "GP202", "rnn-lr20": "GP403"}
QUICK_STEPS = 120  # the test's reduced run
STEPS = 400
WINDOW = 35


class WordLM(nn.Module):
    def __init__(
        self, cell: str, vocab: int, emb: int = 64, hidden: int = 128, layers: int = 2, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, emb)
        kinds = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": lambda *a, **k: nn.RNN(*a, nonlinearity="tanh", **k)}
        self.rnn = kinds[cell](emb, hidden, layers, dropout=dropout)
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x: Tensor, hidden: object = None) -> tuple[Tensor, object]:
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(out)), hidden


def repackage(hidden: object) -> object:
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


def main(variant: str = "gru", steps: int = STEPS, log: str | None = None, every: int = 50) -> common.RunResult:
    torch.manual_seed(0)
    data, vocab = common.words()
    streams = common.stream_batches(data, batch=16)
    cell = {"lstm": "lstm", "gru": "gru", "lstm-hooks": "lstm", "lstm-forget-bias": "lstm", "rnn-lr20": "rnn"}[variant]
    model = WordLM(cell, len(vocab))
    if variant == "lstm-forget-bias":
        with torch.no_grad():
            for name, p in model.rnn.named_parameters():
                if name.startswith("bias_ih"):
                    p[128:256] = -3.0
                elif name.startswith("bias_hh"):
                    p[128:256] = 0.0
    criterion = nn.CrossEntropyLoss()
    lr, clip = 20.0, 0.25
    declared = {"grad_clip": clip} if variant == "gru" else {}
    result = common.RunResult("word_lm", variant, VARIANTS[variant])
    hidden = None
    model.train()
    if variant == "lstm-hooks":
        return _with_optimizer_hooks(model, streams, len(vocab), steps, log, every, result)
    with gradprobe.attach(model, log=log, every=every, truncation=WINDOW, config={}, **declared) as probe:
        for _, (x, y) in zip(range(steps), common.bptt_windows(streams, WINDOW)):
            hidden = None if hidden is None else repackage(hidden)
            model.zero_grad()
            output, hidden = model(x, hidden)
            loss = criterion(output.view(-1, len(vocab)), y.reshape(-1))
            loss.backward()
            if variant == "gru":
                probe.step(loss)  # before clipping: the clip is declared above
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                probe.step(loss)  # after clipping: the probe sees what the optimizer gets
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            result.losses.append(loss.item())
    result.findings = probe.findings
    result.steps = steps
    return result


def _with_optimizer_hooks(
    model: WordLM, streams: Tensor, vocab: int, steps: int, log: str | None, every: int, result: common.RunResult
) -> common.RunResult:
    """The same loop with an optimizer, as most users write it: the probe steps with ``opt.step()``."""
    criterion = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=20.0)
    hidden = None
    with gradprobe.attach(model, log=log, every=every, config={}, optimizer=opt) as probe:
        for _, (x, y) in zip(range(steps), common.bptt_windows(streams, WINDOW)):
            hidden = None if hidden is None else repackage(hidden)
            opt.zero_grad()
            output, hidden = model(x, hidden)
            loss = criterion(output.view(-1, vocab), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
            result.losses.append(loss.item())
    result.findings = probe.findings
    result.steps = probe.step_index
    result.truncation = probe.truncation
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "gru", STEPS)
