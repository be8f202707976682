"""Custom cells in every calling convention: ``h``, ``(h, c)``, ``(out, h)`` and ``(out, (h, c))``.

The reference is the user's own graph: the total ``dL/dh_t`` of each step's
hidden state (``retain_grad``), compared with the probe's deep event.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradprobe

T, B, H = 9, 4, 6


class TanhCell(nn.Module):
    """``h' = tanh(W x + U h)``; returns ``h'`` or ``(out, h')``."""

    def __init__(self, returns_out: bool, scale: float = 1.0) -> None:
        super().__init__()
        self.inp = nn.Linear(3, H)
        self.rec = nn.Linear(H, H, bias=False)
        with torch.no_grad():
            self.inp.weight.mul_(scale)
        self.returns_out = returns_out

    def forward(self, x, h=None):
        h = torch.tanh(self.inp(x) + (self.rec(h) if h is not None else 0))
        return (2 * h, h) if self.returns_out else h


class PairCell(nn.Module):
    """An LSTM-like cell: state ``(h, c)``; returns ``(h, c)`` or ``(out, (h, c))``."""

    def __init__(self, returns_out: bool) -> None:
        super().__init__()
        self.gates = nn.Linear(3 + H, 4 * H)
        self.returns_out = returns_out

    def forward(self, x, state=None):
        h, c = state if state is not None else (x.new_zeros(x.shape[0], H),) * 2
        i, f, g, o = self.gates(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h.sum(dim=1, keepdim=True), (h, c)) if self.returns_out else (h, c)


class Loop(nn.Module):
    def __init__(self, cell: nn.Module, pair: bool, start_empty: bool = False) -> None:
        super().__init__()
        self.cell, self.pair, self.start_empty = cell, pair, start_empty
        self.kept: list[torch.Tensor] = []

    def forward(self, x, keep=False):
        h = torch.zeros(B, H, dtype=x.dtype)
        state = None if self.start_empty else (h, torch.zeros_like(h)) if self.pair else h
        total = x.new_zeros(())
        for t in range(T):
            result = self.cell(x[t], state)
            returns_out = self.cell.returns_out
            state = result[1] if returns_out else result
            out = result[0] if returns_out else (state[0] if self.pair else state)
            h_t = state[0] if self.pair else state
            if keep:
                h_t.retain_grad()
                self.kept.append(h_t)
            total = total + (out * (t + 1)).pow(2).mean()
        return total


CASES = {
    "h": (lambda: TanhCell(returns_out=False), False),
    "(out, h)": (lambda: TanhCell(returns_out=True), False),
    "(h, c)": (lambda: PairCell(returns_out=False), True),
    "(out, (h, c))": (lambda: PairCell(returns_out=True), True),
}


@pytest.mark.parametrize("start_empty", [False, True], ids=["given-state", "first-call-without-state"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_cell_convention_is_measured_exactly(case, start_empty):
    make, pair = CASES[case]
    torch.manual_seed(0)
    model = Loop(make(), pair, start_empty).double()
    x = torch.randn(T, B, 3, dtype=torch.float64)
    model(x, keep=True).backward()
    expected = [float(h.grad.norm()) for h in model.kept]
    model.zero_grad()
    events: list[dict] = []
    with gradprobe.attach(model, every=1, cells=["cell"], config={}, sinks=[events.append]) as probe:
        model(x).backward()
        probe.step()
    (deep,) = [e for e in events if e["kind"] == "deep"]
    assert deep["seq_len"] == T and deep["chained"] is True
    assert deep["grad_norms"] == pytest.approx(expected, rel=1e-9)
    assert probe.layers["cell"].jacobian_norms and all(v > 0 for v in probe.layers["cell"].jacobian_norms)
    assert not [e for e in events if e["kind"] == "error"]


def test_a_custom_cell_gets_the_saturation_of_its_bounded_outputs():
    torch.manual_seed(0)
    loud = Loop(TanhCell(returns_out=False, scale=40.0), pair=False)  # inputs x40: tanh pinned at +-1
    x = torch.randn(T, B, 3)
    events: list[dict] = []
    with gradprobe.attach(loud, every=1, cells=["cell"], config={}, sinks=[events.append]) as probe:
        loud(x).backward()
        probe.step()
    (sat,) = [e for e in events if e["kind"] == "saturation"]
    with torch.no_grad():
        h, states = torch.zeros(B, H), []
        for t in range(T):
            h = loud.cell(x[t], h)
            states.append(h[: probe.settings.deep_rows])
    expected = float((torch.cat(states).abs() > 0.95).float().mean())
    assert sat["layer"] == "cell" and sat["fractions"]["output_state"] == pytest.approx(expected)
    assert expected > 0.5


def test_an_unbounded_custom_state_gets_no_saturation_figure():
    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3 + H, H)
            self.returns_out = False

        def forward(self, x, h):
            return 3 * self.lin(torch.cat([x, h], dim=1))

    torch.manual_seed(0)
    model = Loop(Linear(), pair=False)
    events: list[dict] = []
    with gradprobe.attach(model, every=1, cells=["cell"], config={}, sinks=[events.append]) as probe:
        model(torch.randn(T, B, 3)).backward()
        probe.step()
    assert [e for e in events if e["kind"] == "deep"]
    assert not [e for e in events if e["kind"] == "saturation"]
