"""A batch-1 character classifier in the manner of PyTorch's "classifying names with a character-level RNN"
tutorial: a hand-written RNN module (``i2h`` over the input and hidden concatenated, tanh), called once per
character with ``output, hidden = rnn(char, hidden)``, the loss on the last output, and manual SGD
(``p.add_(p.grad, alpha=-lr)``). One word at a time: the class is the group of the word's first letter,
so the first character must be carried to the end of the word: the user declares the need
(``dependency_length=10``, the longest word).

Variants:
    healthy: the module as the tutorial writes it (with tanh), lr 0.02.
    no-memory (broken, GP101): the hidden-to-hidden block of ``i2h`` x0.02: the gradient horizon (~4 steps)
        falls short of the declared 10, and the loss stays near chance.

    python benchmarks/corpus/char_classifier.py --variant healthy --steps 1500
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "no-memory": "GP101"}
QUICK_STEPS = 1500  # the test runs it in full (3 s)
STEPS = 1500  # the no-memory twin re-learns its recurrence by ~3000 steps: it is judged while broken
LETTERS = "abcdefghijklmnopqrstuvwxyz"
GROUPS = ("abcdefgh", "ijklmnop", "qrstuvwxyz")
HIDDEN = 64
MAX_WORD = 10  # the longest word: the first character is needed up to 10 steps later


class CharRNN(nn.Module):
    """The tutorial's module: ``hidden = tanh(i2h(cat(input, hidden)))``, ``output = log_softmax(h2o(hidden))``.

    gradprobe knows nothing of its math: it is a custom cell, named with ``cells=[...]``.
    """

    def __init__(self, inputs: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.hidden_size = hidden
        self.i2h = nn.Linear(inputs + hidden, hidden)
        self.h2o = nn.Linear(hidden, classes)

    def forward(self, x: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        hidden = torch.tanh(self.i2h(torch.cat((x, hidden), 1)))
        return torch.log_softmax(self.h2o(hidden), dim=1), hidden

    def init_hidden(self) -> Tensor:
        return torch.zeros(1, self.hidden_size)


def word_list() -> list[str]:
    text = common.TEXT.read_text(encoding="utf-8").lower()
    return [w for w in "".join(c if c in LETTERS else " " for c in text).split() if 3 <= len(w) <= MAX_WORD]


def one_hot(word: str) -> Tensor:
    out = torch.zeros(len(word), 1, len(LETTERS))
    for i, c in enumerate(word):
        out[i, 0, LETTERS.index(c)] = 1.0
    return out


def label(word: str) -> Tensor:
    return torch.tensor([next(i for i, g in enumerate(GROUPS) if word[0] in g)])


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 100) -> common.RunResult:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2)
    words = word_list()
    rnn = CharRNN(len(LETTERS), HIDDEN, len(GROUPS))
    if variant == "no-memory":
        with torch.no_grad():
            rnn.i2h.weight[:, len(LETTERS) :].mul_(0.02)
    criterion = nn.NLLLoss()
    lr = 0.02
    result = common.RunResult("char_classifier", variant, VARIANTS[variant])
    with gradprobe.attach(rnn, log=log, every=every, cells=[rnn], dependency_length=MAX_WORD, config={}) as probe:
        for _ in range(steps):
            word = words[int(torch.randint(len(words), (1,), generator=generator))]
            line, target = one_hot(word), label(word)
            hidden = rnn.init_hidden()
            rnn.zero_grad()
            for i in range(line.size(0)):
                output, hidden = rnn(line[i], hidden)
            loss = criterion(output, target)
            loss.backward()
            probe.step(loss)
            for p in rnn.parameters():
                p.data.add_(p.grad.data, alpha=-lr)
            result.losses.append(loss.item())
    result.findings, result.steps = probe.findings, steps
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
