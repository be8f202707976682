"""Minimal inline-SVG charts (no plotting dependency): line charts and heatmaps.

Every text that reaches the SVG goes through :func:`html.escape`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ["#440154", "#482878", "#3e4a89", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    dashed: bool = False
    color: str | None = None


def _finite(v: float | None, log: bool) -> bool:
    return v is not None and math.isfinite(v) and (v > 0 or not log)


def _plotted(v: float | None, log: bool) -> float | None:
    """The value on the chart's axis (log10 on a log axis), or ``None`` where it cannot be drawn."""
    if v is None or not _finite(v, log):
        return None
    return math.log10(v) if log else v


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick positions (1, 2 or 5 times a power of ten apart) inside ``[low, high]``."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float, log: bool) -> str:
    shown = 10**value if log else value
    return f"{shown:.2g}" if (abs(shown) >= 1e4 or 0 < abs(shown) < 1e-2) else f"{shown:.3g}"


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str = "",
    y_label: str = "",
    log_y: bool = False,
    hline: float | None = None,
    vlines: Sequence[float] = (),
    width: int = 520,
    height: int = 240,
) -> str:
    """An SVG line chart; points that are missing (or <= 0 on a log axis) break the line."""
    left, right, top, bottom = 60, 12, 28, 40
    xs = [x for s in series for x, y in zip(s.xs, s.ys) if _finite(y, log_y)]
    ys = [v for s in series for v in (_plotted(y, log_y) for y in s.ys) if v is not None]
    line_at = _plotted(hline, log_y)
    if line_at is not None:
        ys.append(line_at)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
    ]
    parts.append(f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{escape(title)}</text>')
    if not xs:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>')
    for tick in _ticks(y0, y1):
        parts.append(
            f'<text x="{left - 4}" y="{py(tick) + 4:.1f}" text-anchor="end" class="tick">{escape(_label(tick, log_y))}</text>'
        )
    for tick in _ticks(x0, x1):
        parts.append(f'<text x="{px(tick):.1f}" y="{top + ph + 14}" text-anchor="middle" class="tick">{tick:g}</text>')
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="axis">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 12 {top + ph / 2})" class="axis">'
        f"{escape(y_label + (' (log)' if log_y else ''))}</text>"
    )
    if line_at is not None:
        y = py(line_at)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="ref"/>')
    for x in vlines:
        if x0 <= x <= x1:
            parts.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{top + ph}" class="event"/>')
    for index, s in enumerate(series):
        color = s.color or COLORS[index % len(COLORS)]
        segments: list[list[str]] = [[]]
        for x, value in zip(s.xs, s.ys):
            at = _plotted(value, log_y)
            if at is not None:
                segments[-1].append(f"{px(x):.1f},{py(at):.1f}")
            elif segments[-1]:
                segments.append([])
        dash = ' stroke-dasharray="5,4"' if s.dashed else ""
        for points in segments:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            elif points:
                parts.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="1.5"{dash} points="{" ".join(points)}"/>'
                )
        parts.append(
            f'<text x="{left + pw - 4}" y="{top + 14 + 13 * index}" text-anchor="end" fill="{color}" class="legend">{escape(s.label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def heatmap(
    title: str,
    rows: Sequence[tuple[str, Sequence[float | None]]],
    *,
    x_label: str = "",
    y_label: str = "",
    width: int = 520,
    height: int = 260,
    x_step: int = 1,
) -> str:
    """An SVG heatmap of log10 values: one row per labelled series (e.g. training step), one column per time step
    (per ``x_step`` time steps: the axis is labelled in time steps)."""
    left, right, top, bottom = 70, 70, 28, 40
    values = [math.log10(v) for _, row in rows for v in row if v is not None and math.isfinite(v) and v > 0]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
    ]
    parts.append(f'<text x="{width / 2}" y="16" text-anchor="middle" class="title">{escape(title)}</text>')
    if not values or not rows:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    columns = max(len(row) for _, row in rows)
    pw, ph = width - left - right, height - top - bottom
    cw, ch = pw / columns, ph / len(rows)
    for r, (label, row) in enumerate(rows):
        y = top + r * ch
        for c, v in enumerate(row):
            if v is None or not math.isfinite(v) or v <= 0:
                color = "#dddddd"
            else:
                color = PALETTE[min(len(PALETTE) - 1, int((math.log10(v) - low) / span * len(PALETTE)))]
            parts.append(
                f'<rect x="{left + c * cw:.2f}" y="{y:.2f}" width="{cw + 0.3:.2f}" height="{ch + 0.3:.2f}" fill="{color}"/>'
            )
        if len(rows) <= 12 or r % max(1, len(rows) // 8) == 0:
            parts.append(
                f'<text x="{left - 4}" y="{y + ch / 2 + 4:.1f}" text-anchor="end" class="tick">{escape(label)}</text>'
            )
    for tick in _ticks(0, columns - 1):
        parts.append(
            f'<text x="{left + (tick + 0.5) * cw:.1f}" y="{top + ph + 14}" text-anchor="middle" class="tick">{tick * x_step:g}</text>'
        )
    parts.append(
        f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="axis">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 12 {top + ph / 2})" class="axis">{escape(y_label)}</text>'
    )
    for i, color in enumerate(reversed(PALETTE)):
        parts.append(
            f'<rect x="{width - right + 12}" y="{top + i * ph / len(PALETTE):.1f}" width="12" height="{ph / len(PALETTE) + 0.5:.1f}" fill="{color}"/>'
        )
    parts.append(f'<text x="{width - right + 28}" y="{top + 8}" class="tick">{escape(f"{10**high:.2g}")}</text>')
    parts.append(f'<text x="{width - right + 28}" y="{top + ph}" class="tick">{escape(f"{10**low:.2g}")}</text>')
    parts.append("</svg>")
    return "".join(parts)
