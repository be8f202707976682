"""Bounded series: keep at most ``limit`` evenly spaced points of an unbounded stream."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

#: Columns a chart's time axis (time step t, steps back k) shows at most; a longer series is binned.
TIME_AXIS_LIMIT = 1000


def binning_stride(length: int, limit: int = TIME_AXIS_LIMIT) -> int:
    """The power-of-two bin width that fits ``length`` values into ``limit`` columns (1: no binning)."""
    stride = 1
    while length > stride * limit:
        stride *= 2
    return stride


def binned(values: Sequence[float | None], stride: int) -> list[float | None]:
    """Each run of ``stride`` values as its largest finite value (``None`` where it has none): a spike is never
    averaged away, and memory and page size stay bounded for any sequence length."""
    if stride == 1:
        return list(values)
    out: list[float | None] = []
    for start in range(0, len(values), stride):
        finite = [v for v in values[start : start + stride] if v is not None and math.isfinite(v)]
        out.append(max(finite) if finite else None)
    return out


def on_time_axis(values: Sequence[float | None], limit: int = TIME_AXIS_LIMIT) -> tuple[list[int], list[float | None]]:
    """``(x, y)`` of a series over time steps, binned to at most ``limit`` points (x: each bin's first step)."""
    stride = binning_stride(len(values), limit)
    ys = binned(values, stride)
    return [i * stride for i in range(len(ys))], ys


class TimeRows:
    """Heatmap rows (one per deep probe) over time steps, each binned on arrival; :meth:`grid` puts them on one
    common axis. Memory: at most ``rows`` x ``limit`` values, whatever the sequence length."""

    def __init__(self, rows: int = 200, limit: int = TIME_AXIS_LIMIT) -> None:
        self.limit = limit
        self.kept = Downsampled(rows)

    def add(self, step: Any, values: Sequence[float | None]) -> None:
        stride = binning_stride(len(values), self.limit)
        self.kept.add((step, stride, binned(values, stride)))

    def __len__(self) -> int:
        return len(self.kept)

    def grid(self) -> tuple[int, list[tuple[Any, list[float | None]]]]:
        """``(stride, [(step, values), ...])``: every row binned by the widest stride (column ``c`` covers time
        steps ``c * stride`` onward)."""
        items = list(self.kept)
        stride = max((row_stride for _, row_stride, _ in items), default=1)
        return stride, [(step, binned(values, stride // row_stride)) for step, row_stride, values in items]


class Downsampled:
    """Keeps every ``stride``-th item; when full, drops every other kept item and doubles the stride.

    Memory stays below ``limit`` items whatever the stream length, and the
    kept items stay evenly spaced over the whole stream.
    """

    def __init__(self, limit: int = 2000) -> None:
        self.limit = limit
        self.items: list[Any] = []
        self.stride = 1
        self.seen = 0

    def add(self, item: Any) -> None:
        if self.seen % self.stride == 0:
            self.items.append(item)
            if len(self.items) >= self.limit:
                self.items = self.items[::2]
                self.stride *= 2
        self.seen += 1

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


_INF = float("inf")


class MinMaxSeries:
    """A numeric series over training steps, bucketed so that no spike is lost.

    Each bucket covers ``width`` consecutive steps and keeps the smallest and
    the largest finite value in it (and the steps where they occurred); when
    there are ``limit`` buckets, neighbours merge and the width doubles. Memory
    stays below ``limit`` buckets for any run length, and the largest value of
    the whole run is always one of the kept maxima. Non-finite values are
    counted per bucket, never plotted as numbers.
    """

    def __init__(self, limit: int = 2000) -> None:
        self.limit = limit
        self.width = 1
        self.buckets: list[list[Any]] = []  # [start, min_x, min_y, max_x, max_y, nonfinite]

    def add(self, x: int | None, y: float | None) -> None:
        if x is None:
            return
        buckets = self.buckets
        start = x - x % self.width
        if buckets and buckets[-1][0] >= start:
            bucket = buckets[-1]  # this bucket, or a step number going back (a second rank): the last bucket
        else:
            bucket = [start, None, None, None, None, 0]
            buckets.append(bucket)
            if len(buckets) >= self.limit:
                self._merge()
                bucket = self.buckets[-1]
        if y is None:
            return
        if not -_INF < y < _INF:  # NaN and +-inf
            bucket[5] += 1
            return
        low = bucket[2]
        if low is None or y < low:
            bucket[1], bucket[2] = x, y
        high = bucket[4]
        if high is None or y > high:
            bucket[3], bucket[4] = x, y

    def _merge(self) -> None:
        self.width *= 2
        merged: list[list[Any]] = []
        for bucket in self.buckets:
            start = bucket[0] - bucket[0] % self.width
            if merged and merged[-1][0] == start:
                into = merged[-1]
                if bucket[2] is not None and (into[2] is None or bucket[2] < into[2]):
                    into[1], into[2] = bucket[1], bucket[2]
                if bucket[4] is not None and (into[4] is None or bucket[4] > into[4]):
                    into[3], into[4] = bucket[3], bucket[4]
                into[5] += bucket[5]
            else:
                merged.append([start, *bucket[1:]])
        self.buckets = merged

    def points(self) -> tuple[list[int], list[float]]:
        """The kept extremes in step order (min and max of each bucket; one point when they coincide)."""
        xs: list[int] = []
        ys: list[float] = []
        for _, min_x, min_y, max_x, max_y, _ in self.buckets:
            pairs = sorted({(min_x, min_y), (max_x, max_y)}) if min_y is not None else []
            for x, y in pairs:
                xs.append(x)
                ys.append(y)
        return xs, ys

    def nonfinite_steps(self) -> list[int]:
        """The first step of every bucket that held a non-finite value."""
        return [bucket[0] for bucket in self.buckets if bucket[5]]

    def __len__(self) -> int:
        return len(self.buckets)
