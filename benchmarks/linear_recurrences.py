"""What measuring a linear recurrence costs: a Mamba model (``transformers``, from a config) and a deep LRU.

Three copies of one model train side by side in one process, in alternating turns of steps (forward,
backward, ``clip_grad_norm_``, AdamW): plain, probed with cheap steps only (``every=10**9``), and probed
with a deep step on every step (``every=1``: the adapter's decays, the exact profile, the recurrence
event). The ratios to the plain copy, CPU time, min / median / max over turns, at one thread.

    python benchmarks/linear_recurrences.py [--turns 6] [--steps 3] [--length 128] [--width 64]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gradprobe

sys.path.insert(0, str(Path(__file__).resolve().parent / "corpus"))


def mamba(width: int) -> nn.Module:
    import transformers

    config = transformers.MambaConfig(vocab_size=256, hidden_size=width, state_size=16, num_hidden_layers=2, expand=2)
    return transformers.MambaForCausalLM(config)


def deep_lru(width: int) -> nn.Module:
    from lru_recall import Block  # type: ignore[import-not-found]

    blocks = nn.Sequential(nn.Embedding(256, 32), Block((0.9, 0.999)), Block((0.9, 0.999)), nn.Linear(32, 256))
    return blocks


def make_step(model: nn.Module, ids: torch.Tensor, lm: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        if lm:
            loss = model(input_ids=ids, labels=ids).loss
        else:
            loss = nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    step.opt = opt  # type: ignore[attr-defined]
    return step


def measure(name: str, model: nn.Module, ids: torch.Tensor, lm: bool, turns: int, steps: int) -> dict[str, list[float]]:
    plain, cheap, deep = model, copy.deepcopy(model), copy.deepcopy(model)
    steps_of = {
        "plain": make_step(plain, ids, lm),
        "cheap": make_step(cheap, ids, lm),
        "deep": make_step(deep, ids, lm),
    }
    probes = [
        gradprobe.attach(cheap, every=10**9, optimizer=steps_of["cheap"].opt, config={}),  # type: ignore[attr-defined]
        gradprobe.attach(deep, every=1, optimizer=steps_of["deep"].opt, config={}),  # type: ignore[attr-defined]
    ]
    times: dict[str, list[float]] = {k: [] for k in steps_of}
    for key, step in steps_of.items():
        step()  # warm-up
    for _ in range(turns):
        for key, step in steps_of.items():
            cpu = time.process_time()
            for _ in range(steps):
                step()
            times[key].append(time.process_time() - cpu)
    for probe in probes:
        probe.close()
    ratios = {key: [t / p for t, p in zip(times[key], times["plain"])] for key in ("cheap", "deep")}
    plain_ms = 1000 * statistics.median(times["plain"]) / steps
    shown = ", ".join(f"{key} {min(r):.2f} / {statistics.median(r):.2f} / {max(r):.2f}x" for key, r in ratios.items())
    print(f"{name}: plain step {plain_ms:.1f} ms; {shown}")
    return ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (8, args.length))
    warnings.filterwarnings("ignore", message=".*falling back to its reference PyTorch implementation.*")
    measure(
        f"Mamba, 2 layers, d_model {args.width}, B=8, T={args.length}",
        mamba(args.width),
        ids,
        True,
        args.turns,
        args.steps,
    )
    measure(
        f"deep LRU, 2 blocks, width 32, 64 states, B=8, T={args.length}",
        deep_lru(32),
        ids,
        False,
        args.turns,
        args.steps,
    )


if __name__ == "__main__":
    main()
