"""torch.compile: no graph break added on steps that are not deep; deep steps measure what eager steps measure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradprobe

dynamo = pytest.importorskip("torch._dynamo")


class CellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(3, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[1], 8)
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
        return self.head(h)


class Fused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 8, num_layers=2, dropout=0.2)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][-1])


def _graph_breaks(model: nn.Module, x: torch.Tensor) -> int:
    dynamo.reset()
    return int(dynamo.explain(model)(x).graph_break_count)


@pytest.mark.parametrize("make", [CellLoop, Fused], ids=["cell-loop", "fused-lstm"])
def test_no_graph_break_on_steps_that_are_not_deep(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(6, 4, 3)
    baseline = _graph_breaks(model, x)  # Dynamo's own breaks (it does not trace nn.LSTM)
    with gradprobe.attach(model, every=10, config={}) as probe:
        probe._capture.start_step("off")
        assert _graph_breaks(model, x) == baseline
        probe._capture.start_step("sample")  # sampled saturation is skipped under compile
        assert _graph_breaks(model, x) == baseline
        probe._capture.start_step("deep")
        deep = _graph_breaks(model, x)
    if make is CellLoop:
        assert deep > baseline  # the deep step's cell hooks run eagerly
    else:
        assert deep == baseline  # Dynamo runs nn.LSTM and its hooks eagerly anyway


@pytest.mark.parametrize("make", [CellLoop, Fused], ids=["cell-loop", "fused-lstm"])
def test_a_compiled_model_is_measured_on_deep_steps_as_in_eager_mode(make):
    torch.manual_seed(0)
    model = make().eval()  # no dropout: the two runs see the same forward
    x, y = torch.randn(6, 4, 3), torch.randn(4, 1)
    profiles = []
    for compiled in (False, True):
        dynamo.reset()
        runner = torch.compile(model, backend="eager") if compiled else model
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: both runs see the same weights
        events: list[dict] = []
        with gradprobe.attach(model, optimizer=opt, every=2, config={}, sinks=[events.append]) as probe:
            for _ in range(4):
                opt.zero_grad()
                nn.functional.mse_loss(runner(x), y).backward()
                opt.step()
        assert probe.step_index == 4
        profiles.append([(e["step"], e["layer"], e["grad_norms"]) for e in events if e["kind"] == "deep"])
    eager, compiled_run = profiles
    assert [(s, n) for s, n, _ in compiled_run] == [(s, n) for s, n, _ in eager] and eager
    for (_, _, a), (_, _, b) in zip(eager, compiled_run):
        assert b == pytest.approx(a, rel=1e-5)
