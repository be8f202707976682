"""GradprobeCallback with a real lightning.Trainer on CPU: one probe step per optimizer step, findings delivered."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from gradprobe_lightning import GradprobeCallback

import gradprobe
from gradprobe.events import iter_events


class Tagger(pl.LightningModule):
    def __init__(self, lr: float = 0.05, loss_scale: float = 1.0) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)
        self.lr, self.loss_scale = lr, loss_scale
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y) * self.loss_scale
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Spiky(Tagger):
    """A loss 1e4x larger on batch 10: one extreme gradient spike."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * (1e4 if batch_idx == 10 else 1.0)


def _loader(batches: int = 12) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batches * 4, 10, 3, generator=g), torch.randn(batches * 4, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def _trainer(tmp_path: Path, callback: GradprobeCallback, **options) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=pl.loggers.CSVLogger(tmp_path, name="csv"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **options,
    )


def _metrics(tmp_path: Path) -> list[dict[str, str]]:
    (path,) = tmp_path.glob("csv/version_*/metrics.csv")
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_one_probe_step_per_optimizer_step_with_accumulation_and_clipping(tmp_path):
    torch.manual_seed(0)
    model = Tagger()
    log = tmp_path / "run.log"
    callback = GradprobeCallback(log=str(log), every=2, config={})
    trainer = _trainer(tmp_path, callback, accumulate_grad_batches=3, gradient_clip_val=0.01)
    trainer.fit(model, _loader(12))
    assert trainer.global_step == 4
    assert callback.steps == 4 and callback.probe is None  # closed at fit end
    steps = [e for e in iter_events(log) if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [0, 1, 2, 3]
    # the loss of a step: the sum of its three micro-batches, each divided by 3 by Lightning
    expected = [sum(model.losses[i : i + 3]) / 3 for i in range(0, 12, 3)]
    assert [e["loss"] for e in steps] == pytest.approx(expected, rel=1e-6)
    assert all(e["clip"]["kind"] == "norm" and e["clip"]["threshold"] == pytest.approx(0.01, rel=1e-4) for e in steps)
    deep = [e for e in iter_events(log) if e["kind"] == "deep"]
    assert [e["step"] for e in deep] == [0, 2] and all(e["seq_len"] == 10 for e in deep)
    rows = _metrics(tmp_path)
    assert any(row.get("gradprobe/rnn.l0/horizon") for row in rows)
    assert any(row.get("gradprobe/findings/warning") not in (None, "") for row in rows)


def test_findings_reach_the_logger_and_the_callback(tmp_path):
    """A spike of 1e4x on one step and no clipping: GP401/GP102 are found and logged."""

    torch.manual_seed(0)
    model = Spiky(lr=1e-4)
    callback = GradprobeCallback(every=100, config={})
    _trainer(tmp_path, callback).fit(model, _loader(14))
    codes = {f.code for f in callback.findings}
    assert {"GP102", "GP401"} <= codes
    rows = _metrics(tmp_path)
    warnings = [float(row["gradprobe/findings/warning"]) for row in rows if row.get("gradprobe/findings/warning")]
    errors = [float(row["gradprobe/findings/error"]) for row in rows if row.get("gradprobe/findings/error")]
    assert warnings and errors
    assert warnings[-1] + errors[-1] == sum(f.severity in ("warning", "error") for f in callback.findings)


def test_the_probe_is_closed_when_training_raises(tmp_path):
    class Broken(Tagger):
        def training_step(self, batch, batch_idx):
            if batch_idx == 3:
                raise RuntimeError("data went missing")
            return super().training_step(batch, batch_idx)

    original = torch.autograd.backward
    callback = GradprobeCallback(config={})
    with pytest.raises(RuntimeError, match="data went missing"):
        _trainer(tmp_path, callback).fit(Broken(), _loader(8))
    assert callback.probe is None and callback.steps == 3
    assert torch.autograd.backward is original  # every hook went with the probe


def test_a_clipped_run_gets_no_gp401(tmp_path):
    torch.manual_seed(0)
    callback = GradprobeCallback(every=100, config={})
    _trainer(tmp_path, callback, gradient_clip_val=1.0).fit(Spiky(lr=1e-4), _loader(14))
    assert "GP401" not in {f.code for f in callback.findings}
    assert isinstance(callback.findings, list) and all(isinstance(f, gradprobe.Finding) for f in callback.findings)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="Lightning runs 16-mixed with a GradScaler only on GPUs (on CPU it switches to bf16-mixed, unscaled); "
    "the GradScaler path itself is tested in tests/loops/test_optimizer_hooks.py",
)
def test_mixed_precision_values_are_unscaled(tmp_path):
    """Under 16-mixed the loss and the gradients are scaled by the GradScaler; the probe divides the scale out."""
    results = {}
    for precision in ("32-true", "16-mixed"):
        torch.manual_seed(0)
        model = Tagger()
        log = tmp_path / f"{precision}.log"
        callback = GradprobeCallback(log=str(log), every=2, config={})
        trainer = pl.Trainer(
            accelerator="gpu",
            devices=1,
            precision=precision,
            max_steps=4,
            logger=False,
            callbacks=[callback],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, _loader(8))
        results[precision] = [e for e in iter_events(log) if e["kind"] == "step"]
    plain, mixed = results["32-true"], results["16-mixed"]
    assert len(plain) == len(mixed) == 4
    assert all(e.get("grad_scale", 1.0) > 1 for e in mixed)
    for a, b in zip(plain, mixed):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)  # fp16 autocast changes the numbers a little
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=0.05)


def test_the_callback_takes_the_options_every_entry_point_takes(tmp_path):
    """The same rule keywords as lint/check/attach: an Options object, with keywords on top."""
    from gradprobe.config import Options

    torch.manual_seed(0)
    model = Spiky(lr=1e-4)
    callback = GradprobeCallback(every=100, options=Options(config={}, ignore=("GP401",)), fail_on="error")
    _trainer(tmp_path, callback).fit(model, _loader(14))
    codes = {f.code for f in callback.findings}
    assert "GP102" in codes and "GP401" not in codes
