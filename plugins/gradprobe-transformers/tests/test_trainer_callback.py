"""GradprobeTrainerCallback with a real transformers.Trainer on CPU: one probe step per optimizer step, findings delivered."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from gradprobe_transformers import GradprobeTrainerCallback

from gradprobe.events import iter_events


class TinyTagger(nn.Module):
    """A plain module returning ``{"loss", "logits"}``, as the Trainer accepts."""

    def __init__(self, spike_at: int | None = None) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)
        self.spike_at = spike_at
        self.calls = 0
        self.losses: list[float] = []

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(self.rnn(inputs)[0][:, -1])
        loss = nn.functional.mse_loss(logits, labels)
        if self.training:
            self.losses.append(float(loss.detach()))
            if self.calls == self.spike_at:
                loss = loss * 1e4
            self.calls += 1
        return {"loss": loss, "logits": logits}


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 10, 3, generator=g), torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"inputs": self.x[i], "labels": self.y[i]}


def _train(tmp_path, model, callback, **options):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=options.pop("learning_rate", 1e-2),
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **options,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Pairs(48), callbacks=[callback])
    trainer.train()
    return trainer


def test_one_probe_step_per_optimizer_step_with_accumulation_and_the_trainers_clipping(tmp_path):
    torch.manual_seed(0)
    model = TinyTagger()
    log = tmp_path / "run.log"
    callback = GradprobeTrainerCallback(log=str(log), every=2, config={})
    trainer = _train(tmp_path, model, callback, max_steps=4, gradient_accumulation_steps=3, max_grad_norm=0.01)
    assert trainer.state.global_step == 4
    assert callback.steps == 4 and callback.probe is None
    steps = [e for e in iter_events(log) if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [0, 1, 2, 3]
    for event, start in zip(steps, range(0, 12, 3)):  # the Trainer divides each micro-batch loss by 3
        assert event["loss"] == pytest.approx(sum(model.losses[start : start + 3]) / 3, rel=1e-5)
    assert all(e["clip"]["kind"] == "norm" and e["clip"]["threshold"] == pytest.approx(0.01, rel=1e-4) for e in steps)
    assert all(e["grad_norm"] > 0.01 for e in steps)  # as backward produced it, before the Trainer clipped
    deep = [e for e in iter_events(log) if e["kind"] == "deep"]
    assert [e["step"] for e in deep] == [0, 2] and all(e["seq_len"] == 10 for e in deep)


def test_findings_are_delivered_to_the_callback_and_the_trainer_state(tmp_path):
    torch.manual_seed(0)
    model = TinyTagger(spike_at=10)
    callback = GradprobeTrainerCallback(every=100, config={})
    trainer = _train(tmp_path, model, callback, max_steps=12, max_grad_norm=0.0, learning_rate=1e-4)  # 0: no clipping
    codes = {f.code for f in callback.findings}
    assert {"GP102", "GP401"} <= codes
    (entry,) = [e for e in trainer.state.log_history if "gradprobe_findings" in e]
    assert {f["code"] for f in entry["gradprobe_findings"]} == codes
    json.dumps(trainer.state.log_history)  # trainer_state.json can hold it


def test_with_the_trainers_default_clipping_there_is_no_gp401(tmp_path):
    torch.manual_seed(0)
    callback = GradprobeTrainerCallback(every=100, config={})
    _train(tmp_path, TinyTagger(spike_at=10), callback, max_steps=12, learning_rate=1e-4)  # max_grad_norm=1.0
    assert "GP401" not in {f.code for f in callback.findings}


def test_close_after_a_failed_train_removes_every_hook(tmp_path):
    class Broken(TinyTagger):
        def forward(self, inputs, labels):
            if self.calls == 3:
                raise RuntimeError("bad batch")
            return super().forward(inputs, labels)

    original = torch.autograd.backward
    callback = GradprobeTrainerCallback(config={})
    with pytest.raises(RuntimeError, match="bad batch"):
        try:
            _train(tmp_path, Broken(), callback, max_steps=6)
        finally:
            callback.close()
    assert callback.probe is None and callback.steps == 3
    assert torch.autograd.backward is original


def test_the_callback_takes_the_options_every_entry_point_takes(tmp_path):
    """The same rule keywords as lint/check/attach: an Options object, with keywords on top."""
    from gradprobe.config import Options

    torch.manual_seed(0)
    model = TinyTagger(spike_at=10)
    callback = GradprobeTrainerCallback(every=100, options=Options(config={}), ignore=["GP401"])
    _train(tmp_path, model, callback, max_steps=12, max_grad_norm=0.0, learning_rate=1e-4)
    codes = {f.code for f in callback.findings}
    assert "GP102" in codes and "GP401" not in codes
