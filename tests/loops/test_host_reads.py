"""Host reads per step: each ``item``/``tolist``/``float``/``bool``/``int`` of a tensor is a device synchronization
on a GPU (a plain loop has none). Counted by patching those methods while the quick start runs.

A cheap step of the quick start (``attach(model, optimizer=opt)``) reads the norms of its one gradient pass
back in one transfer, and the loss; the optimizer-time comparison that detects clipping reads its norms only
when the loop changed the gradients (clipping, AMP unscaling), found without a pass from the gradients'
version counters. (Was 5 reads per cheap step, with four passes over the gradients.)
"""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.quantities.step_statistics import StepStatistics

READS = ("item", "tolist", "__float__", "__bool__", "__int__", "__index__")


@contextlib.contextmanager
def counted_reads():
    """Count the host reads of tensors while the block runs."""
    count = [0]
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(original):
        def read(self, *args, **kwargs):
            count[0] += 1
            return original(self, *args, **kwargs)

        return read

    for name, original in saved.items():
        setattr(torch.Tensor, name, counting(original))
    try:
        yield count
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(8, 16, num_layers=2)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize(("clip", "each"), [(None, 0), (1.0, 1)], ids=["plain loop", "clipping loop"])
def test_a_cheap_quick_start_step_reads_nothing_back_but_one_batch_every_32_steps(tmp_path, clip, each):
    """A cheap step leaves its norms, loss and output checks on the device; they are read back 32 steps at a
    time. A clipping loop's clip_grad_norm_ is served from the backward norms after one comparison (the AMP
    guard: one read)."""
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 4, 8, generator=data), torch.randn(12, 4, 1, generator=data)
    norms = []

    def step() -> None:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    log = tmp_path / "run.log"
    with gradprobe.attach(model, log=log, every=1000, saturation_every=0, optimizer=opt, config={}):
        step()  # step 0 is deep
        per_step = []
        for _ in range(96):
            with counted_reads() as reads:
                step()
            per_step.append(reads[0] - each)
    with counted_reads() as plain_reads:
        step()
    assert plain_reads[0] == 0  # the count sees only the probe's reads
    batches = [i for i, count in enumerate(per_step) if count]
    assert batches == [31, 63, 95] and all(per_step[i] == 1 for i in batches), (
        per_step
    )  # steps 32, 64, 96: steps 1-32, 33-64, 65-96
    steps = [e for e in map(json.loads, log.read_text().splitlines()) if e.get("kind") == "step"]
    assert [e["step"] for e in steps] == list(range(97))  # every step, in order
    for event, norm in zip(steps, norms):
        assert event["grad_norm"] == pytest.approx(float(norm), rel=1e-5)
        assert (event["clip"] is not None) == (clip is not None and float(norm) > clip)


def test_the_findings_read_the_waiting_steps_first(tmp_path):
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = gradprobe.attach(model, every=1000, saturation_every=0, optimizer=opt, config={})
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(12, 4, 8)).pow(2).mean().backward()
        opt.step()
    with counted_reads() as reads:
        assert isinstance(probe.findings, list)
    assert reads[0] >= 1  # the waiting steps' one read
    assert probe.quantity(StepStatistics).latest is not None
    probe.close()


def test_a_non_finite_forward_on_a_waiting_step_is_still_placed_in_its_layer(tmp_path):
    """A deferred step keeps each output's norm, not the output: an Inf/NaN in the forward pass is still placed
    in the first layer that produced it."""
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log = tmp_path / "run.log"
    with gradprobe.attach(model, log=log, every=1000, saturation_every=0, optimizer=opt, config={}):
        for step in range(8):
            x = torch.randn(12, 4, 8)
            if step == 5:
                x[3, 1, 2] = float("nan")
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    steps = [e for e in map(json.loads, log.read_text().splitlines()) if e.get("kind") == "step"]
    bad = [e["step"] for e in steps if e["nonfinite"]]
    assert bad[0] == 5  # then the NaN gradients reach the weights
    assert steps[5]["nonfinite"]["where"] == "forward" and steps[5]["nonfinite"]["layer"] == "rnn"


def test_a_waiting_step_keeps_a_float64_loss_exact(tmp_path):
    """The batch read widens everything to float64: a float64 model's losses are logged as the at-once path
    would log them, not rounded to the norms' float32."""
    torch.manual_seed(0)
    model = Tagger().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log = tmp_path / "run.log"
    losses = []
    with gradprobe.attach(model, log=log, every=1000, saturation_every=0, optimizer=opt, config={}):
        for _ in range(6):
            opt.zero_grad()
            loss = model(torch.randn(12, 4, 8, dtype=torch.float64)).pow(2).mean() + 1 / 3
            loss.backward()
            losses.append(loss.item())
            opt.step()
    steps = [e for e in map(json.loads, log.read_text().splitlines()) if e.get("kind") == "step"]
    assert [e["loss"] for e in steps] == losses


def test_probe_step_without_optimizer_hooks_also_reads_nothing_back_on_cheap_steps(tmp_path):
    """The ``probe.step(loss)`` form (a loop that updates the weights by hand): once a gradient was seen (until
    then steps are read at once, so that a missing gradient is warned about on time), cheap steps wait on the
    device like the quick start's, and every step event still carries the loss and the total norm of an
    independent computation."""
    torch.manual_seed(0)
    model = Tagger()
    data = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 4, 8, generator=data), torch.randn(12, 4, 1, generator=data)
    norms, losses = [], []
    log = tmp_path / "run.log"
    with gradprobe.attach(model, log=log, every=1000, saturation_every=0, config={}) as probe:
        per_step = []
        for _ in range(70):
            with counted_reads() as reads:
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                probe.step(loss)
            per_step.append(reads[0])
            norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
            losses.append(float(loss.detach()))
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
                    p.grad = None
    assert per_step[0] > 0  # step 0 is deep, read at once (and a gradient is seen: the next steps may wait)
    batches = [i for i, count in enumerate(per_step) if count]
    assert batches == [0, 32, 64] and per_step[32] == per_step[64] == 1, per_step  # steps 1-32, 33-64
    steps = [e for e in map(json.loads, log.read_text().splitlines()) if e.get("kind") == "step"]
    assert [e["step"] for e in steps] == list(range(70))
    for event, norm, loss in zip(steps, norms, losses):
        assert event["grad_norm"] == pytest.approx(norm, rel=1e-5) and event["loss"] == pytest.approx(loss)
        assert "clip" not in event  # no optimizer hooks: nothing is said about the loop


def test_a_missing_gradient_is_still_warned_about_at_the_third_step():
    model = Tagger()
    with pytest.warns(gradprobe.GradprobeWarning, match="no gradient in the first 3 steps"):
        with gradprobe.attach(model, every=1000, saturation_every=0, config={}) as probe:
            for _ in range(3):
                probe.step(model(torch.randn(12, 4, 8)).pow(2).mean())  # before backward: no gradient


class LoudCell(nn.Module):
    """A cell whose states are huge but finite (~1e20): their float32 norm would overflow."""

    def __init__(self) -> None:
        super().__init__()
        self.input = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.input(x) * 1e20 + 0.5 * h


def test_huge_finite_outputs_on_a_waiting_step_are_not_called_non_finite(tmp_path):
    """The output check of a deferred step is exact about Inf/NaN: states of ~1e20 (whose float32 norm is inf)
    with a finite loss and finite gradients make no non-finite step, and no GP103."""
    torch.manual_seed(0)
    cell = LoudCell()
    opt = torch.optim.SGD(cell.parameters(), lr=1e-3)
    log = tmp_path / "run.log"
    with gradprobe.attach(
        cell, cells=[cell], log=log, every=1000, saturation_every=0, optimizer=opt, config={}
    ) as probe:
        for _ in range(6):
            h = torch.zeros(2, 4)
            for x in torch.randn(5, 2, 4):
                h = cell(x, h)
            assert not math.isfinite(float(torch.linalg.vector_norm(h.detach())))  # what a norm would have said
            opt.zero_grad()
            (h.mean() * 1e-20).backward()
            opt.step()
        findings = probe.findings
    steps = [e for e in map(json.loads, log.read_text().splitlines()) if e.get("kind") == "step"]
    assert len(steps) == 6 and all(math.isfinite(e["loss"]) and math.isfinite(e["grad_norm"]) for e in steps)
    assert [e["step"] for e in steps if e["nonfinite"]] == []
    assert "GP103" not in {f.code for f in findings}
