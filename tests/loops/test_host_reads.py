"""Host reads per step: each ``item``/``tolist``/``float``/``bool``/``int`` of a tensor is a device synchronization
on a GPU (a plain loop has none). Counted by patching those methods while the quick start runs.

A cheap step of the quick start (``attach(model, optimizer=opt)``) reads the norms of its one gradient pass
back in one transfer, and the loss; the optimizer-time comparison that detects clipping reads its norms only
when the loop changed the gradients (clipping, AMP unscaling), found without a pass from the gradients'
version counters. (Was 5 reads per cheap step, with four passes over the gradients.)
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import gradprobe

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


@pytest.mark.parametrize(("clip", "most"), [(None, 2), (1.0, 3)], ids=["plain loop", "clipping loop"])
def test_a_cheap_quick_start_step_reads_the_host_at_most_twice_or_three_times_when_clipping(tmp_path, clip, most):
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(12, 4, 8), torch.randn(12, 4, 1)

    def step() -> None:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()

    with gradprobe.attach(model, log=tmp_path / "run.log", every=50, saturation_every=0, optimizer=opt, config={}):
        step()  # step 0 is deep
        per_step = []
        for _ in range(10):
            with counted_reads() as reads:
                step()
            per_step.append(reads[0])
    with counted_reads() as plain_reads:
        step()
    assert plain_reads[0] == 0  # the count sees only the probe's reads
    assert max(per_step) <= most, per_step
    assert min(per_step) >= 1  # the counter counts: the norms are read back
