from __future__ import annotations

import pytest
import torch
from torch import nn

import gradprobe


def write_run(
    path, *, steps=12, every=4, seq_len=30, fix="off", model=None, spike_at=None, seed=0, dependency_length=None
):
    """A small real training run under the probe, writing ``path``."""
    torch.manual_seed(seed)
    model = model or nn.RNN(2, 16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with gradprobe.attach(
        model, log=path, every=every, fix=fix, config={}, dependency_length=dependency_length
    ) as probe:
        for step in range(steps):
            out, _ = model(torch.randn(seq_len, 4, 2))
            loss = out.pow(2).mean() * (500.0 if step == spike_at else 1.0)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    return probe


@pytest.fixture(scope="session")
def vanishing_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("logs") / "run.log"
    write_run(path, seq_len=120, steps=24, every=8, dependency_length=120)
    return path


@pytest.fixture(scope="session")
def healthy_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("logs") / "healthy.log"
    lstm = nn.LSTM(2, 16)
    gradprobe.fixes.reinit.orthogonal_recurrent_(lstm)
    gradprobe.fixes.reinit.forget_bias_(lstm, 1.0)
    write_run(path, model=lstm, seq_len=10)
    return path
