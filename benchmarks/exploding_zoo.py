"""fix="auto" on the exploding cases of the test zoo: does the loss stay finite and within 10x of its start?

    python benchmarks/exploding_zoo.py            # every case x recipe x loss, 3 seeds, fix off and auto (~6 min on 2 cores)
    python benchmarks/exploding_zoo.py --quick    # one seed, auto only
    python benchmarks/exploding_zoo.py --regression   # large targets: auto against clip_grad_norm_ at 1, 10, 100

Each case is a recurrent layer whose gradients explode from the first step
(a tanh RNN with recurrent spectral norm 3 or 5, a GRU with recurrent
weights x8, a linear recurrence with W = 1.3 Q), read out by a linear head
and trained on a first-step dependency (loss on the last step) or a running
sum (loss on every step) with the optimizers users reach for.

``--regression`` trains a default tanh RNN on a running sum with large
targets (x20) at learning rates up to the edge of divergence, with momentum
and adaptive optimizers: it compares ``fix="auto"`` with the fixed
``clip_grad_norm_`` thresholds a user would try. A run's *loss
level* is the median over blocks of 20 steps, as gradprobe's loss rules read
it; the table gives the highest level over the run relative to the first
block, the highest single loss relative to the first one, and the last level.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradprobe

HIDDEN = 64
INPUTS = 4
SEQ_LEN = 30
BATCH = 16
BLOCK = 20


def tanh_rnn_with_spectral_norm(value: float) -> nn.Module:
    rnn = nn.RNN(INPUTS, HIDDEN)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(value / torch.linalg.matrix_norm(rnn.weight_hh_l0, ord=2))
    return rnn


def gru_with_recurrent_scale(value: float) -> nn.Module:
    gru = nn.GRU(INPUTS, HIDDEN)
    with torch.no_grad():
        gru.weight_hh_l0.mul_(value)
    return gru


class LinearCell(nn.Module):
    """``h' = W h + U x`` with ``W = rho * Q`` (Q orthogonal): the theory fixture of GP102, here trained."""

    def __init__(self, rho: float) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(HIDDEN, HIDDEN))
        self.W = nn.Parameter(rho * q)
        self.U = nn.Parameter(0.1 * torch.randn(HIDDEN, INPUTS))

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return h @ self.W.T + x @ self.U.T


class LinearRecurrence(nn.Module):
    """A Python loop over a :class:`LinearCell`."""

    def __init__(self, rho: float) -> None:
        super().__init__()
        self.cell = LinearCell(rho)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.new_zeros(x.shape[1], HIDDEN)
        states = []
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
            states.append(h)
        return torch.stack(states), h


CASES: dict[str, Callable[[], nn.Module]] = {
    "tanh-rnn-rho3": lambda: tanh_rnn_with_spectral_norm(3.0),
    "tanh-rnn-rho5": lambda: tanh_rnn_with_spectral_norm(5.0),
    "gru-whh-x8": lambda: gru_with_recurrent_scale(8.0),
    "linear-rho1.3": lambda: LinearRecurrence(1.3),
}

REGRESSION_RECIPES: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd-momentum-0.03": lambda p: torch.optim.SGD(p, lr=0.03, momentum=0.9),
    "sgd-momentum-0.06": lambda p: torch.optim.SGD(p, lr=0.06, momentum=0.9),
    "sgd-momentum-0.1": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam-3e-2": lambda p: torch.optim.Adam(p, lr=3e-2),
    "adam-1e-1": lambda p: torch.optim.Adam(p, lr=1e-1),
    "rmsprop-3e-2": lambda p: torch.optim.RMSprop(p, lr=3e-2),
}

#: Target scale of the regression runs: a running sum x20.
LARGE_TARGET = 20.0

RECIPES: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd-0.01": lambda p: torch.optim.SGD(p, lr=0.01),
    "sgd-0.1": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum-0.01": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    "adam-1e-3": lambda p: torch.optim.Adam(p, lr=1e-3),
    "adam-1e-2": lambda p: torch.optim.Adam(p, lr=1e-2),
    "rmsprop-1e-3": lambda p: torch.optim.RMSprop(p, lr=1e-3),
}

LOSSES = ("last-step", "every-step")
REGRESSION_LOSS = "large-target"


class Readout(nn.Module):
    def __init__(self, recurrent: nn.Module, every_step: bool) -> None:
        super().__init__()
        self.recurrent = recurrent
        self.head = nn.Linear(HIDDEN, 1)
        self.every_step = every_step

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.recurrent(x)
        return self.head(out if self.every_step else out[-1])


@dataclass
class ZooRun:
    """The losses of one run and how high they went."""

    losses: list[float]

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in self.losses)

    def levels(self) -> list[float]:
        return [statistics.median(self.losses[i : i + BLOCK]) for i in range(0, len(self.losses), BLOCK)]

    @property
    def worst_level(self) -> float:
        """Highest loss level over the run / the first level (inf when a loss was not finite)."""
        return max(self.levels()) / self.levels()[0] if self.finite else math.inf

    @property
    def worst_loss(self) -> float:
        """Highest single loss / the first loss (inf when a loss was not finite)."""
        return max(self.losses) / self.losses[0] if self.finite else math.inf

    @property
    def last_level(self) -> float:
        return self.levels()[-1] / self.levels()[0] if self.finite else math.inf


def train(
    case: str, recipe: str, loss: str, fix: str, seed: int, steps: int = 300, clip: float | None = None
) -> ZooRun:
    """Train one case with one recipe; ``fix`` is passed to ``gradprobe.attach``; ``clip``: ``clip_grad_norm_`` at it.

    ``case="tanh-rnn-default"`` is a default-initialized tanh RNN (for the large-target regression).
    """
    torch.manual_seed(seed)
    every_step = loss != "last-step"
    model = Readout(nn.RNN(INPUTS, HIDDEN) if case == "tanh-rnn-default" else CASES[case](), every_step)
    optimizer = {**RECIPES, **REGRESSION_RECIPES}[recipe](list(model.parameters()))
    data = torch.Generator().manual_seed(seed + 1)
    cells = [model.recurrent.cell] if isinstance(model.recurrent, LinearRecurrence) else ()
    losses: list[float] = []
    with gradprobe.attach(model, every=50, fix=fix, cells=cells, config={}) as probe:
        for _ in range(steps):
            x = torch.randn(SEQ_LEN, BATCH, INPUTS, generator=data)
            target = x[:, :, :1].cumsum(0) / 5 if every_step else 2 * x[0, :, :1]
            if loss == REGRESSION_LOSS:
                target = LARGE_TARGET * target
            value = (model(x) - target).pow(2).mean()
            optimizer.zero_grad()
            value.backward()
            probe.step(value)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            losses.append(float(value.detach()))
    return ZooRun(losses)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fix='auto' only")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES))
    parser.add_argument("--regression", action="store_true", help="large targets: auto against fixed clip_grad_norm_")
    args = parser.parse_args(argv)
    seeds = range(1 if args.quick else 3)
    if args.regression:
        return regression_table(seeds)
    fixes = ("auto",) if args.quick else ("off", "auto")
    print(
        "| case | recipe | loss | "
        + " | ".join(f"fix={f}: worst level / worst loss / last level" for f in fixes)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(fixes))
    for case in args.cases:
        for recipe in args.recipes:
            for loss in LOSSES:
                cells = []
                for fix in fixes:
                    runs = [train(case, recipe, loss, fix, seed) for seed in seeds]
                    cells.append(
                        " / ".join(
                            f"{max(getattr(r, a) for r in runs):.3g}"
                            for a in ("worst_level", "worst_loss", "last_level")
                        )
                    )
                print(f"| {case} | {recipe} | {loss} | " + " | ".join(cells) + " |", flush=True)
    return 0


#: The fixed thresholds a user would try, against which fix="auto" is compared.
FIXED_CLIPS = (1.0, 10.0, 100.0)


def regression_table(seeds: range) -> int:
    """Large-target regression: worst level / last level (max over seeds) of auto, off and each fixed clip."""
    columns = [("off", None), ("auto", None), *(("off", c) for c in FIXED_CLIPS)]
    names = ["fix=off", "fix=auto", *(f"clip {c:g}" for c in FIXED_CLIPS)]
    print("| recipe | " + " | ".join(f"{n}: worst level / last level" for n in names) + " |")
    print("|---|" + "---|" * len(columns))
    for recipe in REGRESSION_RECIPES:
        cells = []
        for fix, clip in columns:
            runs = [train("tanh-rnn-default", recipe, REGRESSION_LOSS, fix, seed, clip=clip) for seed in seeds]
            cells.append(" / ".join(f"{max(getattr(r, a) for r in runs):.3g}" for a in ("worst_level", "last_level")))
        print(f"| {recipe} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
