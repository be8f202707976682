"""The exact measurement of diagonal linear recurrences through their adapters, against theory and autograd."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.quantities.recurrence_spectra import decay_fields, sensitivity
from gradprobe.recorders import propagation
from gradprobe.recorders.sequence_replay import SequenceCall, measure_sequence
from gradprobe.reference import LRU, MinGRU
from gradprobe.reference.linear import scan_sequential


class Head(nn.Module):
    def __init__(self, layer: nn.Module, width: int) -> None:
        super().__init__()
        self.layer = layer
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x))


def events_of(model: nn.Module, x: torch.Tensor, **kw: object) -> list[dict]:
    events: list[dict] = []
    with gradprobe.attach(model, every=1, sinks=[events.append], **kw) as probe:
        model(x).pow(2).mean().backward()
        probe.step()
    return events


@pytest.mark.parametrize("radius", [0.5, 0.9, 0.99])
def test_an_lru_on_a_ring_has_profile_r_to_the_k_and_horizon_minus_one_over_ln_r(radius: float) -> None:
    torch.manual_seed(0)
    lru = LRU(3, 8).double()
    lru.set_ring(radius, 0.7)
    steps = 40
    events = events_of(Head(lru, 3).double(), torch.randn(4, steps, 3, dtype=torch.float64))
    deep = next(e for e in events if e["kind"] == "deep")
    recurrence = next(e for e in events if e["kind"] == "recurrence")
    assert deep["profile_kind"] == "state" and deep["seq_len"] == steps
    for k, value in enumerate(deep["profile"]):
        assert value == pytest.approx(radius**k, rel=1e-10, abs=1e-300)
    assert all(v == pytest.approx(radius, rel=1e-12) for v in deep["jacobian_norms"])
    assert deep["lyapunov"][0] == pytest.approx(math.log(radius), rel=1e-10)
    _, horizon = propagation.fit_decay([radius**k for k in range(steps)], 1e-3)
    assert deep["rate"] == pytest.approx(math.log(radius), rel=1e-9)
    assert deep["horizon"] == pytest.approx(horizon)
    tau = -1 / math.log(radius)
    assert recurrence["recurrence"] == "lru" and recurrence["channels"] == 8 and recurrence["nonfinite"] == 0
    assert recurrence["efold_horizon"] == pytest.approx(tau, rel=1e-10)
    assert all(t == pytest.approx(tau, rel=1e-10) for t in recurrence["time_constants"])
    assert recurrence["top_decay"] == pytest.approx(radius, rel=1e-12)
    assert recurrence["cumulative"] == pytest.approx(radius ** (steps - 1), rel=1e-10)
    assert recurrence["sensitivity"] == pytest.approx(math.sqrt(1 + radius**2) / (1 - radius**2) ** 1.5, rel=1e-10)


def test_the_sensitivity_is_the_rms_of_dh_dlambda_under_white_noise() -> None:
    """E|dh/dlambda|^2 = sum_k k^2 r^(2k-2), summed here term by term."""
    for r in (0.5, 0.9, 0.99):
        series = math.sqrt(sum(k * k * r ** (2 * k - 2) for k in range(1, 20000)))
        assert sensitivity(r) == pytest.approx(series, rel=1e-9)
    assert sensitivity(1.0) == math.inf


@pytest.mark.parametrize("seed", [0, 1])
def test_a_mingru_profile_is_the_cumulative_product_of_one_minus_z_measured_by_autograd(seed: int) -> None:
    torch.manual_seed(seed)
    gru = MinGRU(3, 6).double()
    x = torch.randn(2, 25, 3, dtype=torch.float64)
    events = events_of(Head(gru, 6).double(), x)
    profile = next(e for e in events if e["kind"] == "deep")["profile"]
    a, b = gru.transition(x).detach(), gru.inputs(x).detach()
    steps = x.shape[1]
    for k in (0, 1, 5, 12, 24):
        # ||d h_T / d h_(T-k)||: run the recurrence over the last k steps from a state that needs a gradient
        largest = 0.0
        for row in range(x.shape[0]):
            for channel in range(6):
                start = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
                if k == 0:
                    end = start
                else:
                    end = scan_sequential(a[row : row + 1, steps - k :], b[row : row + 1, steps - k :], start)[:, -1]
                (grad,) = torch.autograd.grad(end[0, channel], start)
                largest = max(largest, float(grad.abs().max()))
        assert profile[k] == pytest.approx(largest, rel=1e-10)


def test_the_generic_input_space_profile_agrees_with_the_exact_one_on_a_real_ring() -> None:
    """For real eigenvalues r, dy_T/dx_(T-k) = C r^k gamma B for k >= 1: the input-space profile decays by r per step."""
    torch.manual_seed(0)
    radius = 0.8
    lru = LRU(3, 8).double()
    lru.set_ring(radius, 0.0)
    x = torch.randn(2, 30, 3, dtype=torch.float64)
    lru.batch_first = True  # type: ignore[assignment]  # the generic path reads the time dimension from it
    measured = measure_sequence(lru, SequenceCall((x,), {}), torch.Generator().manual_seed(0), nullcontext, rows=2)
    ratios = [measured.profile[k + 1] / measured.profile[k] for k in range(1, 25)]
    assert all(r == pytest.approx(radius, rel=1e-9) for r in ratios)
    exact_rate, _ = propagation.fit_decay([radius**k for k in range(30)], 1e-3)
    generic_rate, _ = propagation.fit_decay(measured.profile[1:], 1e-3)
    assert generic_rate == pytest.approx(exact_rate, rel=1e-9)


def test_resets_cut_the_profile_but_stay_out_of_the_time_constants() -> None:
    a = torch.full((1, 10, 2), 0.5, dtype=torch.float64)
    a[0, 0] = 0.0  # a document start
    fields = decay_fields(a)
    assert fields["time_constants"][5] == pytest.approx(-1 / math.log(0.5))
    assert fields["decay_min"] == pytest.approx(0.5)


def test_non_finite_decays_are_counted_and_the_deep_event_left_out() -> None:
    a = torch.full((1, 6, 3), 0.9)
    a[0, 2, 1] = math.nan
    a[0, 3, 0] = math.inf
    assert decay_fields(a)["nonfinite"] == 2
