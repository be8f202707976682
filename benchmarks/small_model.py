"""Cheap recording on a small model: a batch-1 character RNN written as a custom cell, trained with manual SGD.

The cell (``h = tanh(W_x x + W_h h + b)``, H=128, 64 symbols) is called once
per character (T=100) by the user's loop; after ``backward`` the loop calls
``probe.step(loss)`` and updates the weights by hand. A plain step is about
half a millisecond, so every microsecond the probe adds per step, or per cell
call, shows. Measured as in ``quick_start.py``: turns of steps in
alternation, CPU and wall time, min / median / max of the probed/plain ratio;
the probe runs with ``every=10**9`` (cheap recording only: no deep step).

    python benchmarks/small_model.py [--hidden 128] [--turns 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import gradprobe

SYMBOLS, LENGTH, TURN = 64, 100, 40


class CharCell(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.input = nn.Linear(SYMBOLS, hidden)
        self.recurrent = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.input(x) + self.recurrent(h))


class CharRNN(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = CharCell(hidden)
        self.out = nn.Linear(hidden, SYMBOLS)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(1, self.hidden)
        logits = []
        for t in range(text.shape[0] - 1):
            h = self.cell(nn.functional.one_hot(text[t : t + 1], SYMBOLS).float(), h)
            logits.append(self.out(h))
        return nn.functional.cross_entropy(torch.cat(logits), text[1:])


def make_step(model: CharRNN, text: torch.Tensor, probe: gradprobe.Probe | None) -> Callable[[], None]:
    def step() -> None:
        loss = model(text)
        loss.backward()
        if probe is not None:
            probe.step(loss)
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.01 * p.grad
                    p.grad = None

    return step


def _turn(step: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(TURN):
        step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--turns", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    text = torch.randint(0, SYMBOLS, (LENGTH + 1,))
    plain_model, probed_model = CharRNN(args.hidden), CharRNN(args.hidden)
    probed_model.load_state_dict(plain_model.state_dict())
    probe = gradprobe.attach(probed_model, cells=["cell"], every=10**9, saturation_every=0, config={})
    plain, probed = make_step(plain_model, text, None), make_step(probed_model, text, probe)
    probed()  # step 0 is deep: the cheap steps follow
    for _ in range(TURN):
        plain()
        probed()
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    plain_seconds = []
    for _ in range(args.turns):
        plain_wall, plain_cpu = _turn(plain)
        probed_wall, probed_cpu = _turn(probed)
        ratios["wall"].append(probed_wall / plain_wall)
        ratios["cpu"].append(probed_cpu / plain_cpu)
        plain_seconds.append(plain_cpu / TURN)
    probe.close()
    cpu, wall = ratios["cpu"], ratios["wall"]
    print(
        f"batch-1 custom-cell RNN, H={args.hidden}, T={LENGTH}: plain step {statistics.median(plain_seconds) * 1e3:.2f} ms"
    )
    print(f"  cheap recording / plain: CPU {min(cpu):.3f} / {statistics.median(cpu):.3f} / {max(cpu):.3f}")
    print(f"                           wall {min(wall):.3f} / {statistics.median(wall):.3f} / {max(wall):.3f}")
    return ratios


if __name__ == "__main__":
    main()
