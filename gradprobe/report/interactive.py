"""The interactive HTML report: Plotly charts (zoom, hover values) in one self-contained, offline page.

Plotly's JavaScript bundle is read from the installed ``plotly`` package
(``gradprobe[html]``) and inlined once, so the page needs no network when it
is viewed. Every string taken from a log is escaped: HTML-escaped where it is
page text or chart text (Plotly renders chart text as HTML), and the chart
data is JSON with ``<``, ``>``, ``&`` and line separators escaped, so nothing
in a log can close the ``<script>`` element that carries it.

Long runs stay legible: the training curves keep the smallest and largest
value of every bucket of steps (:class:`~gradprobe.report.series.MinMaxSeries`),
so a spike is never averaged or sampled away.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from gradprobe.events import finite_number, number
from gradprobe.report.html_parts import caption, findings_table, run_heading, summary_box
from gradprobe.report.series import MinMaxSeries, on_time_axis
from gradprobe.report.summary import LayerSummary, RunSummary

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
.error{color:#b00020;font-weight:600}.warning{color:#b26a00;font-weight:600}.info{color:#555}
.verdict-fail{background:#fde8ea;padding:8px}.verdict-ok{background:#e8f6ea;padding:8px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{width:580px;height:380px;border:1px solid #eee}
code{font-size:12px}
"""

#: Decades shown at most on a heatmap's colour scale (lower values are drawn at its bottom colour).
HEATMAP_DECADES = 12
#: Colour-bar labels at most.
HEATMAP_LABELS = 7
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


def plotly_bundle() -> str | None:
    """Plotly's JavaScript, from the installed ``plotly`` package (``None`` when it is not installed)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        return None
    return str(get_plotlyjs())


def script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>``, ``<!--`` or line separators can appear)."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


class Page:
    """Collects the charts of one page; each chart is a div and a Plotly figure."""

    def __init__(self) -> None:
        self.figures: list[tuple[str, dict[str, Any]]] = []

    def chart(self, title: str, traces: list[dict[str, Any]], layout: dict[str, Any] | None = None) -> str:
        """A chart's div; ``title`` and trace names are escaped here."""
        ident = f"chart{len(self.figures)}"
        for trace in traces:
            if "name" in trace:
                trace["name"] = escape(str(trace["name"]))
        base: dict[str, Any] = {
            "title": {"text": escape(title), "font": {"size": 13}, "x": 0.01, "xanchor": "left", "y": 0.97},
            "margin": {"l": 64, "r": 16, "t": 56, "b": 48},
            "hovermode": "closest",
            "legend": {"font": {"size": 10}, "orientation": "h", "y": -0.22, "x": 0},
        }
        for key, value in (layout or {}).items():
            base[key] = value
        for axis in ("xaxis", "yaxis", "yaxis2"):
            if axis in base:
                base[axis].setdefault("automargin", True)
        self.figures.append((ident, {"data": traces, "layout": base}))
        return f"<div class='chart' id='{ident}'></div>"

    def script(self) -> str:
        calls = [
            f"Plotly.newPlot({script_json(ident)},{script_json(fig['data'])},{script_json(fig['layout'])},"
            "{displaylogo:false,responsive:true,displayModeBar:'hover'});"
            for ident, fig in self.figures
        ]
        return "<script>" + "\n".join(calls) + "</script>"


def _line(name: str, series: MinMaxSeries, color: str, dash: str | None = None) -> dict[str, Any]:
    xs, ys = series.points()
    trace: dict[str, Any] = {
        "type": "scattergl" if len(xs) > 4000 else "scatter",
        "mode": "lines",
        "name": name,
        "x": xs,
        "y": ys,
        "line": {"color": color, "width": 1.2},
    }
    if dash:
        trace["line"]["dash"] = dash
    return trace


def _axis(title: str, log: bool = False, **extra: Any) -> dict[str, Any]:
    axis: dict[str, Any] = {"title": {"text": escape(title)}}
    if log:
        axis["type"] = "log"
    axis.update(extra)
    return axis


def _runs(
    summary: RunSummary, other: RunSummary | None, names: tuple[str, str]
) -> list[tuple[str, RunSummary, str | None]]:
    runs: list[tuple[str, RunSummary, str | None]] = [(names[0], summary, None)]
    if other is not None:
        runs.append((names[1], other, "dot"))
    return runs


def _training(page: Page, runs: list[tuple[str, RunSummary, str | None]]) -> list[str]:
    norm_traces, loss_traces = [], []
    for index, (name, run, dash) in enumerate(runs):
        prefix = f"{name}: " if len(runs) > 1 else ""
        norm_traces.append(_line(f"{prefix}||grad||", run.grad_norm_series, COLORS[index], dash))
        if len(run.clip_series):
            clip = _line(f"{prefix}clip threshold", run.clip_series, "#999999", "dash")
            norm_traces.append(clip)
        loss_traces.append(_line(f"{prefix}loss", run.loss_series, COLORS[index], dash))
        bad = run.loss_series.nonfinite_steps()
        if bad:
            loss_traces.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": f"{prefix}non-finite loss",
                    "x": bad,
                    "y": [None] * len(bad),
                    "marker": {"color": "#d62728", "symbol": "x"},
                }
            )
    return [
        page.chart(
            "Gradient norm over training",
            norm_traces,
            {"xaxis": _axis("training step"), "yaxis": _axis("total gradient norm", log=True)},
        ),
        page.chart("Loss over training", loss_traces, {"xaxis": _axis("training step"), "yaxis": _axis("loss")}),
    ]


def _gates(page: Page, summary: RunSummary) -> list[str]:
    charts = []
    for param, gates in summary.gate_series.items():
        traces = [_line(gate, series, COLORS[i % len(COLORS)]) for i, (gate, series) in enumerate(gates.items())]
        charts.append(
            page.chart(
                f"Gradient norm per gate: {param}",
                traces,
                {"xaxis": _axis("training step"), "yaxis": _axis("gradient norm", log=True)},
            )
        )
    return charts


def _capped(horizon: Any, seq_len: Any) -> float | None:
    """A horizon on the chart: at most T (beyond the sequence it is an extrapolation); no decay reaches T."""
    length = finite_number(seq_len)
    value = number(horizon)
    if value is None or not math.isfinite(value):
        return length
    return min(value, length) if length is not None else value


def _trend(
    page: Page, name: str, runs: list[tuple[str, LayerSummary | None, str | None]], need: float | None = None
) -> str:
    traces = []
    longest = 0.0
    for index, (run_name, layer, dash) in enumerate(runs):
        if layer is None:
            continue
        prefix = f"{run_name}: " if len(runs) > 1 else ""
        rows = list(layer.trend)
        steps = [row[0] for row in rows]
        horizon = [_capped(row[1], row[3]) for row in rows]
        longest = max([longest, *(t for row in rows if (t := finite_number(row[3])) is not None)])
        decay = [math.exp(r) if (r := finite_number(row[2])) is not None and abs(r) < 700 else None for row in rows]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{prefix}horizon (steps)",
                "x": steps,
                "y": horizon,
                "line": {"color": COLORS[index], "dash": dash or "solid"},
            }
        )
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{prefix}decay per step",
                "x": steps,
                "y": decay,
                "yaxis": "y2",
                "line": {"color": COLORS[index + 2], "dash": dash or "solid"},
            }
        )
    shapes = []
    for level, label, color in ((longest, "T (the sequence)", "#888"), (need or 0.0, "declared need", "#d62728")):
        if level > 0:
            shapes.append(
                {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": level, "y1": level,
                 "line": {"dash": "dash", "color": color, "width": 1}, "name": label}
            )  # fmt: skip
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"{label}: {level:g}",
                    "x": [None],
                    "y": [None],
                    "line": {"dash": "dash", "color": color},
                }
            )  # fmt: skip (a legend entry for the line)
    return page.chart(
        f"{name}: horizon and decay rate at each deep probe",
        traces,
        {
            "xaxis": _axis("training step"),
            "yaxis": _axis("horizon (time steps, at most T)", log=True),
            "yaxis2": _axis("signal kept per step", overlaying="y", side="right", showgrid=False),
            "shapes": shapes,
        },
    )


#: The compared run's name and its summary of the same layer, when there is one.
Compared = tuple[str, LayerSummary] | None


def _overlaid(layer: LayerSummary, compared: Compared) -> list[tuple[str, LayerSummary, str]]:
    """``(name prefix, layer, line dash)`` of this run (solid) and the compared one (dotted)."""
    runs = [("", layer, "solid")]
    if compared is not None:
        runs.append((f"{compared[0]}: ", compared[1], "dot"))
    return runs


def _captioned(chart: str, kind: str) -> str:
    """A chart with the sentence under it saying what healthy looks like."""
    return f"<div>{chart}{caption(kind)}</div>"


def _declared_need(summary: RunSummary) -> float | None:
    """The dependency length the run declared (``attach(dependency_length=)``), if any."""
    settings = summary.meta.get("settings")
    return finite_number(settings.get("dependency_length")) if isinstance(settings, dict) else None


def _lyapunov(page: Page, name: str, layer: LayerSummary, compared: Compared = None) -> str | None:
    """The top Lyapunov exponents at each deep probe (a line per exponent; the compared run's dotted)."""
    traces: list[dict[str, Any]] = []
    for prefix, run_layer, dash in _overlaid(layer, compared):
        rows = [row for row in run_layer.trend if row[4]]
        count = max((len(row[4]) for row in rows), default=0)
        traces.extend(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"{prefix}lambda{i + 1}",
                "x": [r[0] for r in rows],
                "y": [finite_number(r[4][i]) if i < len(r[4]) else None for r in rows],
                "line": {"color": COLORS[i % len(COLORS)], "dash": dash},
            }
            for i in range(count)
        )
    if not traces:
        return None
    return page.chart(
        f"{name}: top Lyapunov exponents at each deep probe",
        traces,
        {
            "xaxis": _axis("training step"),
            "yaxis": _axis("natural log per step (> 0 expands)"),
            "shapes": [
                {
                    "type": "line",
                    "xref": "paper",
                    "x0": 0,
                    "x1": 1,
                    "y0": 0,
                    "y1": 0,
                    "line": {"dash": "dot", "color": "#999"},
                }
            ],
        },
    )


def _saturation(page: Page, name: str, layer: LayerSummary, compared: Compared = None) -> str | None:
    traces: list[dict[str, Any]] = []
    for prefix, run_layer, dash in _overlaid(layer, compared):
        rows = list(run_layer.saturation_trend)
        gates = sorted({gate for _, fractions in rows for gate in fractions})
        traces.extend(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"{prefix}{gate}",
                "x": [r[0] for r in rows],
                "y": [finite_number(r[1].get(gate)) for r in rows],
                "line": {"color": COLORS[i % len(COLORS)], "dash": dash},
            }
            for i, gate in enumerate(gates)
        )
    if not traces:
        return None
    return page.chart(
        f"{name}: saturated share per gate",
        traces,
        {"xaxis": _axis("training step"), "yaxis": _axis("share saturated", range=[0, 1])},
    )


def heatmap_scale(values: list[float]) -> tuple[float, float, list[float], list[str]]:
    """``(zmin, zmax, tick values, tick labels)`` of a log10 colour scale: at most HEATMAP_DECADES decades, few labels."""
    top = math.ceil(max(values))
    bottom = max(math.floor(min(values)), top - HEATMAP_DECADES)
    span = max(top - bottom, 1)
    stride = max(1, math.ceil(span / (HEATMAP_LABELS - 1)))
    ticks = [float(v) for v in range(top, bottom - 1, -stride)][::-1]
    return float(bottom), float(top), ticks, [f"1e{int(v)}" for v in ticks]


def _heatmap(page: Page, name: str, layer: LayerSummary) -> str | None:
    """``||dL/dh_t||`` by time step and training step (one run: a heatmap cannot overlay another)."""
    stride, grid = layer.heatmap.grid()
    rows = [(step, norms) for step, norms in grid if norms]
    if not rows:
        return None
    width = max(len(norms) for _, norms in rows)
    z = [
        [
            math.log10(v) if (v := finite_number(norms[t] if t < len(norms) else None)) and v > 0 else None
            for t in range(width)
        ]
        for _, norms in rows
    ]
    finite = [v for row in z for v in row if v is not None]
    if not finite:
        return None
    zmin, zmax, ticks, labels = heatmap_scale(finite)
    trace = {
        "type": "heatmap",
        "z": z,
        "x": [c * stride for c in range(width)],
        "y": [step for step, _ in rows],
        "zmin": zmin,
        "zmax": zmax,
        "colorscale": "Viridis",
        "hovertemplate": "t=%{x}<br>step %{y}<br>log10 ||dL/dh_t||=%{z:.2f}<extra></extra>",
        "colorbar": {"title": {"text": "||dL/dh_t||"}, "tickvals": ticks, "ticktext": labels},
    }
    return page.chart(
        f"{name}: ||dL/dh_t|| by time step and training step",
        [trace],
        {"xaxis": _axis("time step t"), "yaxis": _axis("training step", type="category", nticks=8)},
    )


def _latest(page: Page, name: str, layer: LayerSummary, compared: Compared = None) -> list[str]:
    latest = layer.latest
    ks, profile = on_time_axis([finite_number(v) for v in latest.get("profile", [])])
    rate = finite_number(latest.get("rate"))
    traces: list[dict[str, Any]] = [{"type": "scatter", "mode": "lines", "name": "measured", "x": ks, "y": profile}]
    jacobians: list[dict[str, Any]] = []
    for prefix, run_layer, dash in _overlaid(layer, compared):
        series = run_layer.latest or {}
        ts, jac = on_time_axis([finite_number(v) for v in series.get("jacobian_norms", [])])
        line = {"dash": dash}
        jacobians.append(
            {"type": "scatter", "mode": "lines", "name": f"{prefix}||dS_t/dS_(t-1)||", "x": ts, "y": jac, "line": line}
        )
        if prefix:  # the compared run's profile, dotted
            other_ks, other_profile = on_time_axis([finite_number(v) for v in series.get("profile", [])])
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": f"{prefix}measured",
                    "x": other_ks,
                    "y": other_profile,
                    "line": line,
                }
            )
    if rate is not None and profile and abs(rate) < 700:
        fit = [math.exp(rate * k) if abs(rate * k) < 700 else None for k in ks]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": f"fit x{math.exp(rate):.3f}/step",
                "x": ks,
                "y": fit,
                "line": {"dash": "dash"},
            }
        )
    step = latest.get("step")
    return [
        page.chart(
            f"{name}: propagation profile at step {step}",
            traces,
            {"xaxis": _axis("steps back k"), "yaxis": _axis("||v^T dS_T/dS_(T-k)||", log=True)},
        ),
        page.chart(
            f"{name}: per-step Jacobian spectral norm at step {step}",
            jacobians,
            {
                "xaxis": _axis("time step t"),
                "yaxis": _axis("spectral norm"),
                "shapes": [
                    {
                        "type": "line",
                        "xref": "paper",
                        "x0": 0,
                        "x1": 1,
                        "y0": 1,
                        "y1": 1,
                        "line": {"dash": "dot", "color": "#999"},
                    }
                ],
            },
        ),
    ]


def render_interactive(
    summary: RunSummary,
    bundle: str,
    fail_on: str | None = None,
    other: RunSummary | None = None,
    names: tuple[str, str] = ("run", "other"),
) -> str:
    """The interactive page for ``summary`` (and ``other``, overlaid, for ``--compare``)."""
    e = escape
    fail_on = fail_on or summary.fail_on
    page = Page()
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>gradprobe report</title>",
        f"<style>{STYLE}</style><script>{bundle}</script></head><body>",
    ]
    out.extend(run_heading(summary))
    if other is not None:
        compared = ", ".join(e(log.path) for log in other.logs)
        out.append(
            f"<p>Compared with {e(names[1])}: {compared} ({other.steps} steps"
            f"{'; ' + e(other.loss_text()) if other.loss_text() else ''}); its curves are dotted.</p>"
        )
    out.extend(summary_box(summary, fail_on))
    out.append("<h2>Findings</h2>")
    out.extend(findings_table(summary.findings))
    if other is not None:
        out.append(f"<h2>Findings of {e(names[1])}</h2>")
        out.extend(findings_table(other.findings))
    runs = _runs(summary, other, names)
    out.append(
        "<h2>Training</h2><p>Long runs are drawn from the smallest and largest value of every bucket of steps: "
        "no spike is lost. Drag to zoom, double-click to reset; hover for values.</p><div class='charts'>"
    )
    out.extend(_training(page, runs))
    out.append("</div>" + caption("training"))
    gates = _gates(page, summary)
    if gates:
        out.append("<h2>Gradient norm per gate</h2><div class='charts'>")
        out.extend(gates)
        out.append("</div>")
    for name, layer in summary.layers.items():
        if not layer.latest:
            continue
        out.append(
            f"<h2>{e(name)} <small>({e(str(layer.mode))}, {layer.probes} deep probes)</small></h2><div class='charts'>"
        )
        other_layer = other.layers.get(name) if other is not None else None
        trend = _trend(
            page,
            name,
            [(names[0], layer, None), *([(names[1], other_layer, "dot")] if other is not None else [])],
            _declared_need(summary),
        )
        out.append(_captioned(trend, "trend"))
        overlay = (names[1], other_layer) if other_layer is not None else None
        for chart, kind in (
            (_lyapunov(page, name, layer, overlay), "lyapunov"),
            (_saturation(page, name, layer, overlay), "saturation"),
            (_heatmap(page, name, layer), "heatmap"),
            (_heatmap(page, f"{name} ({names[1]})", other_layer) if other_layer is not None else None, "heatmap"),
        ):
            if chart is not None:
                out.append(_captioned(chart, kind))
        profile, jacobian = _latest(page, name, layer, overlay)
        out.extend((_captioned(profile, "profile"), _captioned(jacobian, "jacobian")))
        out.append("</div>")
    if summary.problems:
        out.append("<h2>Problems reading the log</h2><ul>")
        out.extend(f"<li>{e(path)}: {e(str(problem))}</li>" for path, problem in summary.problems[:100])
        out.append("</ul>")
    out.append(page.script())
    out.append("</body></html>\n")
    return "\n".join(out)
