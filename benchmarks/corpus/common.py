"""Shared pieces of the corpus: data loading, the run result, and the verdict of a run."""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

import gradprobe
from gradprobe.findings import severity_rank

TEXT = Path(__file__).resolve().parents[2] / "examples" / "data" / "alice_chapter1.txt"


@dataclass
class RunResult:
    """One corpus run: how the loss moved and what gradprobe said."""

    script: str
    variant: str
    expected: str | None  # the code a broken twin must raise at warning or above; None when healthy
    losses: list[float] = field(default_factory=list)
    findings: list[gradprobe.Finding] = field(default_factory=list)
    steps: int = 0
    truncation: int | None = None  # the probe's truncated-BPTT window (declared or detected)

    @property
    def initial_loss(self) -> float:
        return statistics.median(self.losses[:10])

    @property
    def final_loss(self) -> float:
        finite = [v for v in self.losses[-10:] if math.isfinite(v)]
        return statistics.median(finite) if len(finite) == len(self.losses[-10:]) else float("nan")

    @property
    def raised(self) -> list[gradprobe.Finding]:
        """Findings at warning or above."""
        return [f for f in self.findings if severity_rank(f.severity) >= 1]

    @property
    def verdict_ok(self) -> bool:
        codes = {f.code for f in self.raised}
        return not codes if self.expected is None else self.expected in codes


def words(limit: int | None = None) -> tuple[Tensor, list[str]]:
    """The shipped text as a stream of word ids (lower-cased, punctuation as words), and the vocabulary."""
    text = TEXT.read_text(encoding="utf-8").lower()
    for mark in ".,;:!?()\"'-":
        text = text.replace(mark, f" {mark} ")
    tokens = text.split() + ["<eos>"]
    vocab = sorted(set(tokens))
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.tensor([index[w] for w in tokens[:limit]])
    return ids, vocab


def chars() -> tuple[Tensor, list[str]]:
    """The shipped text as character ids, and the alphabet."""
    text = TEXT.read_text(encoding="utf-8")
    alphabet = sorted(set(text))
    index = {c: i for i, c in enumerate(alphabet)}
    return torch.tensor([index[c] for c in text]), alphabet


def stream_batches(data: Tensor, batch: int):
    """``[T_total, batch]`` contiguous streams, one per column (the word_language_model layout)."""
    per_row = len(data) // batch
    return data[: per_row * batch].view(batch, per_row).t().contiguous()


def bptt_windows(streams: Tensor, window: int):
    """Endless ``(input, target)`` windows of ``window`` steps over the streams, epoch after epoch."""
    while True:
        for start in range(0, streams.size(0) - 1 - window, window):
            yield streams[start : start + window], streams[start + 1 : start + 1 + window]


def run_from_command_line(
    variants: dict[str, str | None], main: Callable[..., RunResult], default: str, steps: int
) -> None:
    """``python SCRIPT.py [--variant V] [--steps N] [--log FILE]``: run one variant and print the loss and the findings."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=variants, default=default)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--log")
    args = parser.parse_args()
    result = main(args.variant, args.steps, args.log)
    print(f"loss {result.initial_loss:.4g} -> {result.final_loss:.4g} over {result.steps} steps")
    for finding in result.findings:
        print(finding)
