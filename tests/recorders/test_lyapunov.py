"""The Lyapunov spectrum of a recurrent layer (QR method) against theory."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradprobe


def _linear_rnn(weight_hh: torch.Tensor) -> nn.RNN:
    """A tanh RNN run from h=0 with zero input: it stays at 0, where dh_t/dh_(t-1) = W_hh exactly."""
    size = weight_hh.shape[0]
    rnn = nn.RNN(1, size).double()
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(weight_hh)
        rnn.weight_ih_l0.zero_()
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return rnn


def _spectrum(rnn: nn.Module, steps: int, k: int = 4) -> list[float]:
    report = gradprobe.check(rnn, torch.zeros(steps, 2, 1, dtype=torch.float64), config={}, lyapunov_k=k)
    return report.layers["RNN.l0"].lyapunov


def test_a_diagonal_recurrence_gives_the_logs_of_its_entries():
    spectrum = _spectrum(_linear_rnn(torch.diag(torch.tensor([1.2, 0.9, 0.5, 0.1], dtype=torch.float64))), 300)
    assert spectrum == pytest.approx([0.18232, -0.10536, -0.69315, -2.30259], abs=5e-3)


@pytest.mark.parametrize("gain", [0.8, 1.0, 1.1])
def test_a_scaled_orthogonal_recurrence_gives_log_g_for_every_exponent(gain):
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    spectrum = _spectrum(_linear_rnn(gain * q), 200, k=6)
    assert len(spectrum) == 6 and spectrum == pytest.approx([math.log(gain)] * 6, abs=5e-3)


def test_the_spectrum_is_in_the_deep_event_and_sorted(tmp_path):
    torch.manual_seed(0)
    model = nn.LSTM(3, 8, num_layers=2)
    events: list[dict] = []
    with gradprobe.attach(model, every=1, config={}, sinks=[events.append]) as probe:
        model(torch.randn(40, 2, 3))[0].sum().backward()
        probe.step()
    deep = {e["layer"]: e for e in events if e["kind"] == "deep"}
    for layer in ("LSTM.l0", "LSTM.l1"):
        exponents = deep[layer]["lyapunov"]
        assert len(exponents) == 4 and exponents == sorted(exponents, reverse=True)
        assert all(math.isfinite(v) and v < 0.5 for v in exponents)  # a default LSTM contracts
        assert probe.layers[layer].lyapunov == exponents


def test_it_can_be_switched_off():
    report = gradprobe.check(nn.GRU(2, 4), torch.randn(10, 2, 2), config={}, lyapunov_k=0)
    assert report.layers["GRU.l0"].lyapunov == []
    with pytest.raises(ValueError, match="lyapunov_k"):
        gradprobe.attach(nn.GRU(2, 4), lyapunov_k=-1, config={})


class DiagonalCell(nn.Module):
    """A custom cell ``h' = tanh(W h + U x)`` (measured through torch.func, not the analytic products)."""

    def __init__(self, diagonal: list[float]) -> None:
        super().__init__()
        self.rec = nn.Linear(len(diagonal), len(diagonal), bias=False).double()
        self.inp = nn.Linear(1, len(diagonal), bias=False).double()
        with torch.no_grad():
            self.rec.weight.copy_(torch.diag(torch.tensor(diagonal, dtype=torch.float64)))
            self.inp.weight.zero_()

    def forward(self, x, h):
        return torch.tanh(self.rec(h) + self.inp(x))


def test_a_custom_cell_gets_its_spectrum_through_torch_func():
    cell = DiagonalCell([1.1, 0.7, 0.3])

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell

        def forward(self, x):
            h, out = torch.zeros(x.shape[1], 3, dtype=x.dtype), []
            for x_t in x:
                h = self.cell(x_t, h)
                out.append(h)
            return torch.stack(out)

    report = gradprobe.check(
        Loop(), torch.zeros(200, 2, 1, dtype=torch.float64), cells=["cell"], config={}, lyapunov_k=3
    )
    assert report.layers["cell"].lyapunov == pytest.approx([math.log(1.1), math.log(0.7), math.log(0.3)], abs=5e-3)


def test_both_directions_of_a_bidirectional_layer():
    rnn = nn.RNN(1, 3, bidirectional=True).double()
    weight = torch.diag(torch.tensor([1.05, 0.6, 0.2], dtype=torch.float64))
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            param.copy_(weight if name.startswith("weight_hh") else torch.zeros_like(param))
    report = gradprobe.check(rnn, torch.zeros(200, 2, 1, dtype=torch.float64), config={}, lyapunov_k=3)
    expected = [math.log(1.05), math.log(0.6), math.log(0.2)]
    assert report.layers["RNN.l0"].lyapunov == pytest.approx(expected, abs=5e-3)
    assert report.layers["RNN.l0_reverse"].lyapunov == pytest.approx(expected, abs=5e-3)


def test_the_reports_carry_the_spectrum(vanishing_log_for_lyapunov):
    from click.testing import CliRunner

    from gradprobe.cli import main

    out = CliRunner().invoke(main, ["report", str(vanishing_log_for_lyapunov), "--format", "json"]).output
    import json

    layer = json.loads(out)["layers"]["RNN.l0"]
    assert len(layer["lyapunov"]) == 4 and layer["lyapunov"] == sorted(layer["lyapunov"], reverse=True)
    text = CliRunner().invoke(main, ["report", str(vanishing_log_for_lyapunov)]).output
    assert f"lambda1 {layer['lyapunov'][0]:+.3f}/step" in text


@pytest.fixture
def vanishing_log_for_lyapunov(tmp_path):
    torch.manual_seed(0)
    model = nn.RNN(2, 8)
    log = tmp_path / "run.log"
    with gradprobe.attach(model, log=log, every=2, config={}) as probe:
        for _ in range(4):
            model(torch.randn(30, 2, 2))[0].pow(2).mean().backward()
            probe.step()
            model.zero_grad()
    return log


def _qr_steps(monkeypatch) -> list[int]:
    """Records the steps each QR re-orthonormalization of the sweep covers."""
    from gradprobe.recorders import sweep

    spans: list[int] = []
    real = sweep.LyapunovPeriods.add

    def add(self, upper, done):
        spans.append(done - self.last)
        real(self, upper, done)

    monkeypatch.setattr(sweep.LyapunovPeriods, "add", add)
    return spans


def test_vectors_that_barely_pull_apart_are_re_orthonormalized_every_32_steps(monkeypatch):
    """W = g Q: the vectors keep their relative sizes, so the QR period doubles from its first (4) up to its
    maximum (32; the third period is cut short at the burn-in's end, step 20), and the exponents are ln g."""
    spans = _qr_steps(monkeypatch)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    spectrum = _spectrum(_linear_rnn(0.9 * q), 200)
    assert spectrum == pytest.approx([math.log(0.9)] * 4, abs=1e-9)
    assert spans[:5] == [4, 8, 8, 32, 32] and sum(spans) == 200 and len(spans) <= 200 // 32 + 4


@pytest.mark.parametrize("limited", [True, False])
def test_vectors_that_shrink_fast_are_re_orthonormalized_before_they_leave_single_precision(limited, monkeypatch):
    """W = g Q (g = 0.02) in float32: every vector shrinks 50-fold per step, all alike (no spread). The period
    stops at ln(1e10) / |ln g| = 5 steps; 32 steps (the range check switched off) take them to 1e-54, below
    float32's smallest number, and lose the exponents."""
    gain = 0.02
    from gradprobe.recorders.sweep import lyapunov as sweep_lyapunov

    if not limited:
        monkeypatch.setattr(sweep_lyapunov, "LYAPUNOV_RANGE", math.inf)
    spans = _qr_steps(monkeypatch)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    rnn = _linear_rnn(gain * q).float()
    report = gradprobe.check(rnn, torch.zeros(300, 2, 1), config={}, lyapunov_k=4)
    spectrum = report.layers["RNN.l0"].lyapunov
    longest = int(math.log(1e10) / abs(math.log(gain)))
    if limited:
        assert max(spans[1:]) == longest and spans.count(longest) >= 300 // longest - 3
        assert spectrum == pytest.approx([math.log(gain)] * 4, abs=5e-3)
    else:
        assert max(spans) == 32
        assert not all(math.isfinite(v) and abs(v - math.log(gain)) < 0.5 for v in spectrum)


@pytest.mark.parametrize("fixed_period", [None, 8])
def test_single_precision_exponents_far_apart_need_the_period_to_shrink(fixed_period, monkeypatch):
    """W = Q diag(1, 0.5, 0.1, 0.001) Q^T in float32: the slowest vector shrinks 1000-fold per step against the
    fastest. The adapted period (one step) keeps every exponent; eight steps between QR steps (a ratio of 1e24,
    far beyond single precision) lose them by more than 1 (2.4 on four seeds), which shows the check can fail."""
    from gradprobe.recorders.sweep import lyapunov as sweep_lyapunov

    if fixed_period is not None:
        monkeypatch.setattr(sweep_lyapunov, "LYAPUNOV_EVERY", fixed_period)
        monkeypatch.setattr(sweep_lyapunov, "LYAPUNOV_MAX_EVERY", fixed_period)
    spans = _qr_steps(monkeypatch)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    exponents = torch.tensor([1.0, 0.5, 0.1, 0.001], dtype=torch.float64)
    rnn = _linear_rnn(q @ torch.diag(exponents) @ q.t()).float()
    report = gradprobe.check(rnn, torch.zeros(300, 2, 1), config={}, lyapunov_k=4)
    spectrum = report.layers["RNN.l0"].lyapunov
    expected = exponents.log().tolist()
    if fixed_period is None:
        assert spans[0] == 4 and max(spans[1:]) == 1 and spans.count(1) >= 290  # one step after the first
        assert spectrum == pytest.approx(expected, abs=5e-3)
    else:
        assert max(abs(a - b) for a, b in zip(spectrum, expected)) > 1.0


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_adapted_periods_give_the_exponents_of_a_qr_step_at_every_step(cls, monkeypatch):
    """A nonlinear layer (recurrent weights x2, T=150): the adapted periods (4, 8, then 3 to the burn-in's end,
    then up to 32) give the same exponents as a QR step after every step, to round-off; the burn-in is 15 steps
    in both (a burn-in rounded up to whole periods would average a different stretch of the sequence)."""
    from gradprobe.recorders.sweep import lyapunov as sweep_lyapunov

    torch.manual_seed(5)
    model = cls(3, 12).double()
    with torch.no_grad():
        model.weight_hh_l0.mul_(2)
    x = torch.randn(150, 2, 3, dtype=torch.float64)
    spans = _qr_steps(monkeypatch)
    adapted = gradprobe.check(model, x, config={}, lyapunov_k=4).layers[f"{cls.__name__}.l0"].lyapunov
    assert spans[:3] == [4, 8, 3] and max(spans) > 8
    monkeypatch.setattr(sweep_lyapunov, "LYAPUNOV_EVERY", 1)
    monkeypatch.setattr(sweep_lyapunov, "LYAPUNOV_MAX_EVERY", 1)
    every_step = gradprobe.check(model, x, config={}, lyapunov_k=4).layers[f"{cls.__name__}.l0"].lyapunov
    assert len(adapted) == 4 and adapted == pytest.approx(every_step, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("steps", [40, 35])
def test_off_the_cpu_the_period_is_fixed_and_the_diagonals_are_read_at_the_end(steps):
    """Off the CPU nothing is read back during the sweep: QR steps every 2 steps, one more at the burn-in's end
    (3 of 35 steps), and the exponents from the diagonals at the end; none without QR steps (lyapunov_k=0)."""
    from gradprobe.recorders import sweep

    assert sweep.LyapunovPeriods(torch.device("meta"), steps).exponents() == []
    periods = sweep.LyapunovPeriods(torch.device("meta"), steps)
    rates = torch.tensor([math.log(2.0), math.log(0.5), -3.0], dtype=torch.float64)
    spans = []
    for done in range(1, steps + 1):
        if periods.due(done):
            spans.append(done - periods.last)
            periods.add(torch.diag((rates * spans[-1]).exp()), done)
    assert set(spans[:-1]) <= {1, 2} and sum(spans[:2]) == steps // 10
    assert periods.exponents() == pytest.approx(rates.tolist(), abs=1e-12)
