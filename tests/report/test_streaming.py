"""The report streams: what it keeps is bounded whatever the log length."""

from __future__ import annotations

import math
import tracemalloc

import pytest

from gradprobe.report.series import Downsampled
from gradprobe.report.summary import RunSummary
from gradprobe.rules.engine import RuleEngine


def _events(steps):
    yield {"kind": "meta", "layers": [], "settings": {"every": 50, "fix": "off"}}
    for step in range(steps):
        yield {
            "kind": "step",
            "step": step,
            "loss": 1.0,
            "grad_norm": 1.0 + (step % 7) / 10,
            "nonfinite": None,
            "params": {"w": 1.0},
            "gates": {},
        }
        if step % 50 == 0:
            yield {
                "kind": "deep",
                "step": step,
                "layer": "rnn.l0",
                "mode": "LSTM",
                "seq_len": 100,
                "grad_norms": [1.0] * 100,
                "profile": [0.9**k for k in range(100)],
                "jacobian_norms": [0.9] * 100,
                "rate": math.log(0.9),
                "horizon": 65.6,
            }
        if step % 10 == 0:
            yield {
                "kind": "saturation",
                "step": step,
                "layer": "rnn.l0",
                "mode": "LSTM",
                "fractions": {"input": 0.1},
                "low": {},
                "dead_units": None,
                "units": 8,
            }


def _peak(steps):
    summary, engine = RunSummary(), RuleEngine({})
    tracemalloc.start()
    for event in _events(steps):
        summary.add(event)
        engine.feed(event)
    engine.findings()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert summary.steps == steps
    return peak, summary


def test_downsampled_keeps_evenly_spaced_points():
    series = Downsampled(limit=100)
    for i in range(10_000):
        series.add(i)
    assert len(series) < 100
    gaps = {b - a for a, b in zip(series.items, series.items[1:])}
    assert len(gaps) == 1 and series.items[0] == 0


def test_memory_is_flat_in_the_log_length():
    small, _ = _peak(10_000)
    large, summary = _peak(50_000)
    assert len(summary.training) < 2000 and len(summary.layers["rnn.l0"].heatmap) < 200
    assert large < 1.3 * small, (small, large)  # five times the events, about the same memory


@pytest.mark.parametrize("log", ["vanishing_log", "healthy_log"])
def test_a_report_without_chart_series_says_exactly_what_the_full_reading_says(log, request):
    """charts=False (text and JSON reports) skips only the series the HTML report plots."""
    from gradprobe.report import summarize_logs
    from gradprobe.report.json_report import render_json
    from gradprobe.report.text import render_text

    path = request.getfixturevalue(log)
    full = summarize_logs([path], config={})
    lean = summarize_logs([path], config={}, charts=False)
    assert render_text(lean) == render_text(full)
    assert render_json(lean, "error", None) == render_json(full, "error", None)
    assert len(full.training) and len(full.grad_norm_series)
    assert bool(full.gate_series) == (log == "healthy_log")  # the LSTM's gated weights
    assert not len(lean.training) and not len(lean.grad_norm_series) and not lean.gate_series
    assert all(not len(layer.heatmap) and not len(layer.trend) for layer in lean.layers.values())
