"""A deep LRU in the manner of Orvieto et al. (2023): an embedding, two residual blocks of
LayerNorm -> LRU -> GELU MLP, and a classifier on the last step, trained with AdamW and gradient clipping on
a recall task: the class is the token seen at a fixed early position, so it must be carried to the end
(the user declares the need, ``dependency_length``).

Variants:
    healthy: the documented ring initialization (r in [0.9, 0.999], input normalization), T = 48.
    short-ring (broken, GP501): rings r in [0.3, 0.5]: every channel forgets within a few steps, the token
        never reaches the classifier and the loss stays at chance.
    ring-at-one (broken, GP503): every eigenvalue on the unit circle (set_ring(1.0)).
    long-memory (broken, GP502): rings r in [0.999, 0.9999] (time constants of 1,000-10,000 steps) trained
        on 8-step sequences.

    python benchmarks/corpus/lru_recall.py --variant healthy --steps 300
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe
from gradprobe.reference import LRU

VARIANTS = {"healthy": None, "short-ring": "GP501", "ring-at-one": "GP503", "long-memory": "GP502"}
QUICK_STEPS = 200
STEPS = 400
SYMBOLS, WIDTH, STATE, BATCH = 8, 32, 64, 32


class Block(nn.Module):
    def __init__(self, ring: tuple[float, float]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.lru = LRU(WIDTH, STATE, r_min=ring[0], r_max=ring[1])
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.lru(self.norm(x)))


class DeepLRU(nn.Module):
    def __init__(self, ring: tuple[float, float]) -> None:
        super().__init__()
        self.embed = nn.Embedding(SYMBOLS, WIDTH)
        self.blocks = nn.Sequential(Block(ring), Block(ring))
        self.head = nn.Linear(WIDTH, SYMBOLS)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.blocks(self.embed(tokens))[:, -1])


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 25) -> common.RunResult:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    ring = {"short-ring": (0.3, 0.5), "long-memory": (0.999, 0.9999)}.get(variant, (0.9, 0.999))
    length, position = (8, 0) if variant == "long-memory" else (48, 8)
    model = DeepLRU(ring)
    if variant == "ring-at-one":
        for block in model.blocks:
            block.lru.set_ring(1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    result = common.RunResult("lru_recall", variant, VARIANTS[variant])
    with gradprobe.attach(
        model, log=log, every=every, optimizer=opt, dependency_length=length - position, config={}
    ) as probe:
        for _ in range(steps):
            tokens = torch.randint(0, SYMBOLS, (BATCH, length), generator=generator)
            loss = nn.functional.cross_entropy(model(tokens), tokens[:, position])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            result.losses.append(float(loss.detach()))
    result.findings, result.steps = probe.findings, probe.step_index
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
