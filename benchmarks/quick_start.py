"""What the README's quick start costs per step, against the same plain loop, in one process.

The loop: LSTM (input 64, B=32, T=100) with a linear head, a plain step =
forward, backward, ``clip_grad_norm_(1.0)``, SGD. The probed twin runs the
quick start, ``attach(model, log=..., every=50, optimizer=opt)``: one deep step
in every 50. Plain and probed run in turns of 50 steps (each probed turn holds
one deep step), interleaved, after a warm-up; each ratio is the probed turn's
time over the plain turn's next to it, CPU time (this process) and wall time,
min / median / max over the turns. ``--head`` adds a large embedding in front
(its dense gradient is read every step: a model whose parameters sit mostly
outside the recurrence). Use one thread (``torch.set_num_threads(1)`` is set).

    python benchmarks/quick_start.py [--hidden 64 256 1024] [--turns 6] [--head 50000000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gradprobe

TURN = 50


class Model(nn.Module):
    def __init__(self, hidden: int, inputs: int = 64, head: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(head // inputs, inputs) if head else None
        self.rnn = nn.LSTM(inputs, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        return self.out(self.rnn(x)[0])


def make_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step, opt


def _turn(step: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(TURN):
        step()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(hidden: int, turns: int, head: int = 0) -> dict[str, list[float]]:
    """Per turn of 50 steps, the probed/plain ratio of wall and CPU time."""
    torch.manual_seed(0)
    if head:
        x: torch.Tensor = torch.randint(0, head // 64, (100, 32))
    else:
        x = torch.randn(100, 32, 64)
    y = torch.randn(100, 32, 1)
    plain_model, probed_model = Model(hidden, head=head), Model(hidden, head=head)
    probed_model.load_state_dict(plain_model.state_dict())
    plain, _ = make_loop(plain_model, x, y)
    probed, opt = make_loop(probed_model, x, y)
    folder = tempfile.TemporaryDirectory()
    probe = gradprobe.attach(probed_model, log=Path(folder.name) / "run.log", every=50, optimizer=opt, config={})
    for _ in range(TURN):  # warm-up: the first deep step of a process pays a one-off cost
        plain()
        probed()
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    for _ in range(turns):
        plain_wall, plain_cpu = _turn(plain)
        probed_wall, probed_cpu = _turn(probed)
        ratios["wall"].append(probed_wall / plain_wall)
        ratios["cpu"].append(probed_cpu / plain_cpu)
    probe.close()
    folder.cleanup()
    return ratios


def _summary(values: list[float]) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def main(argv: list[str] | None = None) -> dict[int, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--turns", type=int, default=6, help="turns of 50 steps, each plain then probed")
    parser.add_argument("--head", type=int, default=0, help="parameters of an embedding in front (e.g. 50000000)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    print("quick start (attach(model, log=..., every=50, optimizer=opt)) / plain step with clip_grad_norm_")
    print(f"{'H':>6} {'params':>10}  {'CPU min / median / max':>24}  {'wall min / median / max':>24}")
    for hidden in args.hidden:
        ratios = measure(hidden, args.turns, args.head)
        params = sum(p.numel() for p in Model(hidden, head=args.head).parameters())
        print(f"{hidden:>6} {params:>10.3g}  {_summary(ratios['cpu']):>24}  {_summary(ratios['wall']):>24}")
        results[hidden] = ratios
    return results


if __name__ == "__main__":
    main()
