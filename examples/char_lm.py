"""Wrap a plain training loop: a character-level LSTM language model on text shipped in the repo.

The loop is an ordinary truncated-BPTT language model (windows of ``--window``
characters, the state carried across windows). gradprobe adds three lines:
``attach`` around the loop, ``probe.step(loss)`` after backward, and a
report at the end. ``truncation=`` tells the probe the BPTT window, so GP402
can say whether the window suits the gradient horizon it measures.

    python examples/char_lm.py [--steps 300] [--out DIR]
    gradprobe report DIR/char_lm.log --format html -o report.html
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch import Tensor, nn

import gradprobe
from gradprobe.report import summarize_logs
from gradprobe.report.text import render_text

CORPUS = Path(__file__).resolve().parent / "data" / "alice_chapter1.txt"


class CharLM(nn.Module):
    def __init__(self, vocab: int, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = nn.LSTM(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, state = self.rnn(self.embed(x), state)
        return self.head(out), state


def batches(data: Tensor, batch: int, window: int):
    """Contiguous streams: row b reads its own slice of the text, window after window."""
    per_row = (len(data) - 1) // batch
    rows = data[: per_row * batch + 1]
    inputs = rows[:-1].view(batch, per_row)
    targets = rows[1:].view(batch, per_row)
    while True:
        for start in range(0, per_row - window, window):
            yield inputs[:, start : start + window], targets[:, start : start + window]


@torch.no_grad()
def sample(model: CharLM, chars: list[str], prompt: str, length: int = 120) -> str:
    index = {c: i for i, c in enumerate(chars)}
    x = torch.tensor([[index[c] for c in prompt]])
    logits, state = model(x)
    out = prompt
    generator = torch.Generator().manual_seed(0)
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / 0.8, dim=-1)
        nxt = int(torch.multinomial(probs, 1, generator=generator))
        out += chars[nxt]
        logits, state = model(torch.tensor([[nxt]]), state)
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    text = CORPUS.read_text(encoding="utf-8")
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    torch.manual_seed(0)
    model = CharLM(len(chars))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    crit = nn.CrossEntropyLoss()
    log = args.out / "char_lm.log"

    state = None
    losses = []
    with gradprobe.attach(model, log=log, every=args.every, truncation=args.window) as probe:  # <- gradprobe
        for step, (x, y) in zip(range(args.steps), batches(data, args.batch, args.window)):
            logits, state = model(x, state)
            loss = crit(logits.reshape(-1, len(chars)), y.reshape(-1))
            loss.backward()
            probe.step(loss)  # <- gradprobe: after backward, before the optimizer
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            state = tuple(s.detach() for s in state)
            losses.append(loss.item())
    bits = sum(losses[-20:]) / len(losses[-20:]) / math.log(2)
    print(
        f"char LM on {len(text)} characters ({len(chars)} symbols), {args.steps} steps: {bits:.2f} bits/char "
        f"(uniform: {math.log2(len(chars)):.2f})"
    )
    print(f"sample: {sample(model, chars, 'Alice ')!r}\n")
    print(render_text(summarize_logs([log])))
    return {"bits_per_char": bits, "uniform": math.log2(len(chars))}


if __name__ == "__main__":
    main()
