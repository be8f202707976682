"""The report streams: what it keeps is bounded whatever the log length."""

from __future__ import annotations

import tracemalloc

from gradprobe.report import summarize_logs
from gradprobe.report.series import Downsampled


def _write(path, steps):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from report_speed import write_log

    write_log(path, steps)


def test_downsampled_keeps_evenly_spaced_points():
    series = Downsampled(limit=100)
    for i in range(10_000):
        series.add(i)
    assert len(series) < 100
    gaps = {b - a for a, b in zip(series.items, series.items[1:])}
    assert len(gaps) == 1 and series.items[0] == 0


def test_memory_is_flat_in_the_log_length(tmp_path):
    short, long = tmp_path / "short.log", tmp_path / "long.log"
    _write(short, 2_000)
    _write(long, 20_000)
    peaks = []
    for path in (short, long):
        tracemalloc.start()
        summary = summarize_logs([path], config={})
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert summary.steps in (2_000, 20_000)
        assert len(summary.training) < 2000 and all(len(layer.heatmap) < 200 for layer in summary.layers.values())
    assert long.stat().st_size > 9 * short.stat().st_size
    assert peaks[1] < 1.5 * peaks[0], peaks  # ten times the log, not ten times the memory
