"""Loops users write: closures called many times per step (L-BFGS) and truncated BPTT with a carried state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.events import iter_events
from gradprobe.quantities.truncation import TruncationWindows

T = 15


class CellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(2, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor, state=None):
        outputs = []
        for x_t in x:
            state = self.cell(x_t, state)
            outputs.append(self.head(state[0]))
        return torch.stack(outputs), state


class FusedLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor, state=None):
        out, state = self.lstm(x, state)
        return self.head(out), state


@pytest.mark.parametrize("make", [CellLoop, FusedLoop], ids=["cell-loop", "fused"])
def test_lbfgs_closure_calls_keep_one_sequence_in_memory(make):
    torch.manual_seed(0)
    model = make()
    x, y = torch.randn(T, 4, 2), torch.randn(T, 4, 1)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=20, history_size=5)
    kept, events = [], []
    with gradprobe.attach(model, every=1, config={}, sinks=[events.append]) as probe:

        def closure():
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x)[0], y)
            loss.backward()
            capture = probe._capture
            kept.append(
                len(capture.peek().cell_calls["cell"].inputs)
                if make is CellLoop
                else len(capture.peek().stack_calls["lstm"])
            )
            return loss

        for _ in range(2):
            loss = opt.step(closure)
            probe.step(loss)
    assert len(kept) > 10  # the closure ran many times per optimizer step
    assert max(kept) == (T if make is CellLoop else 1)  # never more than one sequence held
    deep = [e for e in events if e["kind"] == "deep"]
    assert [e["seq_len"] for e in deep] == [T, T] and all(e["chained"] for e in deep)


def _language_model_loop(model, steps: int, window: int, carry: bool, log=None):
    stream = torch.randn(steps * window, 3, 2, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradprobe.attach(model, log=log, every=2, config={}) as probe:
        state = None
        for k in range(steps):
            x = stream[k * window : (k + 1) * window]
            out, state = model(x, state if carry else None)
            loss = out.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            probe.step(loss)
            opt.step()
            state = tuple(s.detach() for s in state)  # truncated BPTT: carry the state, cut the graph
    return probe


@pytest.mark.parametrize(("make", "window"), [(FusedLoop, 35), (CellLoop, 20)], ids=["fused", "cell-loop"])
def test_truncated_bptt_with_a_carried_state_is_detected(tmp_path, make, window):
    torch.manual_seed(0)
    probe = _language_model_loop(make(), steps=4, window=window, carry=True, log=tmp_path / "run.log")
    assert probe.truncation == window
    loops = [e for e in iter_events(tmp_path / "run.log") if e["kind"] == "loop"]
    assert [(e["step"], e["truncation"]) for e in loops] == [(1, window)]  # from the first carried step, once


def test_a_loop_that_starts_every_step_afresh_is_not_truncation():
    torch.manual_seed(0)
    assert _language_model_loop(FusedLoop(), steps=4, window=35, carry=False).truncation is None


def test_a_declared_window_wins_over_the_detected_one():
    torch.manual_seed(0)
    model = FusedLoop()
    with gradprobe.attach(model, every=1, config={}, truncation=50) as probe:
        state = None
        for _ in range(3):
            out, state = model(torch.randn(35, 3, 2), state)
            out.sum().backward()
            probe.step()
            state = tuple(s.detach() for s in state)
    assert probe.truncation == 50 and probe.quantity(TruncationWindows).published == {"lstm": 35}


def _windows_loop(model, windows, log):
    """A word-LM style loop over a stream cut into the given windows, the state carried and detached."""
    stream = torch.randn(sum(windows), 3, 2, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradprobe.attach(model, log=log, every=3, config={}) as probe:
        state, start = None, 0
        for window in windows:
            out, state = model(stream[start : start + window], state)
            start += window
            opt.zero_grad()
            out.pow(2).mean().backward()
            probe.step()
            opt.step()
            state = tuple(s.detach() for s in state)
    return probe


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_short_last_batch_of_an_epoch_is_not_the_window(tmp_path, epochs):
    """pytorch/examples' word LM: 35-step windows, the epoch's last one shorter (here 2 steps)."""
    windows = ([35] * 6 + [2]) * epochs
    probe = _windows_loop(FusedLoop(), windows, tmp_path / "run.log")
    assert probe.truncation == 35
    loops = [e["truncation"] for e in iter_events(tmp_path / "run.log") if e["kind"] == "loop"]
    assert loops == [35]


def test_a_variable_bptt_length_gives_its_typical_window(tmp_path):
    """AWD-LSTM draws each window around its BPTT length (70, sd 5; half the time 35)."""
    rng = torch.Generator().manual_seed(0)
    windows = [max(5, int(70 + 5 * float(torch.randn((), generator=rng)))) for _ in range(30)]
    probe = _windows_loop(FusedLoop(), windows, tmp_path / "run.log")
    carried = sorted(windows[1:])  # the first window starts without a carried state
    assert probe.truncation == carried[(len(carried) - 1) // 2]
    loops = [e["truncation"] for e in iter_events(tmp_path / "run.log") if e["kind"] == "loop"]
    assert 1 <= len(loops) <= 4 and abs(loops[-1] - probe.truncation) <= 0.1 * probe.truncation
