"""``gradprobe demo``: the adding problem with a vanishing gradient, diagnosed and fixed.

The adding problem (Hochreiter & Schmidhuber 1997): two channels, random
values in [0, 1] and a marker that is 1 at two positions (one in each half);
the target is the sum of the two marked values. Predicting the mean scores
MSE = 2/12 = 0.167; doing better means carrying a value across up to T steps.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

BASELINE_MSE = 2 / 12


def make_batch(batch: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Inputs ``[seq_len, batch, 2]`` and targets ``[batch, 1]``."""
    values = torch.rand(seq_len, batch, generator=generator)
    markers = torch.zeros(seq_len, batch)
    rows = torch.arange(batch)
    markers[torch.randint(0, seq_len // 2, (batch,), generator=generator), rows] = 1.0
    markers[torch.randint(seq_len // 2, seq_len, (batch,), generator=generator), rows] = 1.0
    return torch.stack([values, markers], dim=2), (values * markers).sum(0).unsqueeze(1)


class Adder(nn.Module):
    """LSTM reading the sequence; a linear head on the last hidden state."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(2, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        logits: Tensor = self.head(out[-1])
        return logits


@dataclass
class TrainingSetup:
    steps: int = 600
    seq_len: int = 100
    batch: int = 64
    lr: float = 1e-2
    seed: int = 0


def train(model: nn.Module, setup: TrainingSetup, probe: object | None = None) -> float:
    """Adam on fresh batches; ``probe.step(loss)`` after each backward. Returns the held-out MSE."""
    generator = torch.Generator().manual_seed(setup.seed)
    opt = torch.optim.Adam(model.parameters(), lr=setup.lr)
    for _ in range(setup.steps):
        x, y = make_batch(setup.batch, setup.seq_len, generator)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if probe is not None:
            probe.step(loss)  # type: ignore[attr-defined]
        opt.step()
        opt.zero_grad()
    return evaluate(model, setup.seq_len)


def evaluate(model: nn.Module, seq_len: int) -> float:
    """MSE on 1000 held-out sequences (fixed seed)."""
    with torch.no_grad():
        x, y = make_batch(1000, seq_len, torch.Generator().manual_seed(12345))
        return nn.functional.mse_loss(model(x), y).item()


def run_demo(
    out: Path, setup: TrainingSetup, hidden: int = 32, echo: Callable[[str], None] = print
) -> dict[str, float]:
    """Train torch's default LSTM under the probe, report, apply the fixes, train again.

    Denormal floats are flushed to zero while it runs (vanishing gradients are
    denormals, slow on CPUs); the process's setting is restored afterwards.
    """
    flushing = _flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        return _run_demo(out, setup, hidden, echo)
    finally:
        torch.set_flush_denormal(flushing)


def _flushing_denormals() -> bool:
    """Whether the CPU flushes denormal floats to zero now (torch has a setter, no getter)."""
    return bool((torch.tensor([5e-324], dtype=torch.float64) * 1.0).item() == 0.0)


def _run_demo(out: Path, setup: TrainingSetup, hidden: int, echo: Callable[[str], None]) -> dict[str, float]:
    import gradprobe
    from gradprobe import fixes
    from gradprobe.report import summarize_logs
    from gradprobe.report.text import render_text

    out.mkdir(parents=True, exist_ok=True)
    log = out / "run.log"
    torch.manual_seed(setup.seed)
    model = Adder(hidden)
    fixed = copy.deepcopy(model)
    echo(
        f"gradprobe demo: an LSTM (torch's default init, hidden {hidden}) learns the adding problem with T={setup.seq_len} "
        f"for {setup.steps} steps; the probe writes {log}"
    )
    start = time.perf_counter()
    with gradprobe.attach(model, log=log, every=25, config={}, dependency_length=setup.seq_len) as probe:
        before = train(model, setup, probe)
    echo(f"test MSE {before:.4f} (predicting the mean: {BASELINE_MSE:.3f}) after {time.perf_counter() - start:.0f}s\n")
    echo(render_text(summarize_logs([log], config={}, charts=False)))
    echo("How to fix it: gradprobe.fixes.apply(model, probe.findings) on the same initial weights does")
    for action in fixes.apply(fixed, probe.findings):
        echo(f"  {action}")
    start = time.perf_counter()
    with gradprobe.attach(fixed, log=out / "fixed.log", every=25, config={}, dependency_length=setup.seq_len) as probe:
        after = train(fixed, setup, probe)
    left = [f for f in probe.findings if f.severity != "info"]
    echo(
        f"and the same training then reaches test MSE {after:.4f} (was {before:.4f}) in {time.perf_counter() - start:.0f}s; "
        f"{len(left)} warnings/errors left."
    )
    echo(
        f"Reports: gradprobe report {log}   |   gradprobe report {log} --compare {out / 'fixed.log'} --format html -o report.html"
    )
    return {"before": before, "after": after}
