"""A DeepAR-style forecaster trained through Lightning: one LSTM runs over a context window and the
prediction window that follows, and the loss (Gaussian negative log-likelihood) covers only the
prediction window, as such models are trained. Series: noisy seasonal sums with a random level and slope.

The first steps of the context reach the loss only through the recurrence and get little gradient: that
is how the model works, not a problem, while the loss keeps falling.

Variants:
    healthy: a 2-layer LSTM, Adam 3e-3, gradient_clip_val 1 (Lightning's clipping, seen by the probe).
    tanh-rnn-lr (broken, GP403): a tanh RNN with recurrent weights x3, plain SGD at 0.5 and no clipping.

    python benchmarks/corpus/forecaster.py --variant healthy --steps 300
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

VARIANTS = {"healthy": None, "tanh-rnn-lr": "GP403"}
QUICK_STEPS = 120  # the test's reduced run
STEPS = 300
CONTEXT, HORIZON, BATCH, HIDDEN = 139, 20, 32, 32


def series(generator: torch.Generator, batch: int = BATCH) -> Tensor:
    """``[batch, CONTEXT + HORIZON]``: level + slope * t + two seasonal terms + noise."""
    t = torch.arange(CONTEXT + HORIZON, dtype=torch.float32)
    level = torch.randn(batch, 1, generator=generator)
    slope = 0.02 * torch.randn(batch, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(batch, 1, generator=generator)
    seasonal = torch.sin(2 * math.pi * t / 12 + phase) + 0.5 * torch.sin(2 * math.pi * t / 7 + 2 * phase)
    return level + slope * t + seasonal + 0.1 * torch.randn(batch, CONTEXT + HORIZON, generator=generator)


class Forecaster(nn.Module):
    """Teacher-forced: the input at step t is the value at t - 1; mean and scale of the value at t come out."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        if cell == "lstm":
            self.rnn: nn.Module = nn.LSTM(1, HIDDEN, num_layers=2, batch_first=True)
        else:
            self.rnn = nn.RNN(1, HIDDEN, batch_first=True)
            with torch.no_grad():
                self.rnn.weight_hh_l0.mul_(3.0)
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, values: Tensor) -> tuple[Tensor, Tensor]:
        inputs = torch.nn.functional.pad(values[:, :-1], (1, 0)).unsqueeze(-1)
        out, _ = self.rnn(inputs)
        mean, raw_scale = self.head(out).unbind(-1)
        return mean, torch.nn.functional.softplus(raw_scale) + 1e-3


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 25) -> common.RunResult:
    import lightning as L
    from gradprobe_lightning import GradprobeCallback

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(8)
    healthy = variant == "healthy"
    batches = [series(generator) for _ in range(steps)]
    result = common.RunResult("forecaster", variant, VARIANTS[variant])

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = Forecaster("lstm" if healthy else "rnn")

        def training_step(self, batch: Tensor, index: int) -> Tensor:
            mean, scale = self.model(batch)
            window = slice(CONTEXT, CONTEXT + HORIZON)  # the loss covers the prediction window only
            loss = nn.functional.gaussian_nll_loss(mean[:, window], batch[:, window], scale[:, window] ** 2)
            result.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            if healthy:
                return torch.optim.Adam(self.parameters(), lr=3e-3)
            return torch.optim.SGD(self.parameters(), lr=0.5)

    probe = GradprobeCallback(log=log, every=every, config={})
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=[probe],
        gradient_clip_val=1.0 if healthy else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|does not have many workers|LeafSpec|treespec).*")
        trainer.fit(Module(), loader)
    result.findings, result.steps = probe.findings, probe.steps
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
