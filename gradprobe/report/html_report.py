"""The HTML report: one self-contained page.

With ``plotly`` installed (``gradprobe[html]``) the page is interactive
(:mod:`gradprobe.report.interactive`); without it, a static page of inline SVG
(no scripts, no external files), which says how to get the interactive one.
"""

from __future__ import annotations

import math
from html import escape

from gradprobe.report.html_parts import caption, findings_table, run_heading, summary_box
from gradprobe.report.series import on_time_axis
from gradprobe.report.summary import RunSummary, horizon_text
from gradprobe.report.svg import Series, heatmap, line_chart

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1140px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
.error{color:#b00020;font-weight:600}.warning{color:#b26a00;font-weight:600}.info{color:#555}
.verdict-fail{background:#fde8ea;padding:8px}.verdict-ok{background:#e8f6ea;padding:8px}
.charts{display:flex;flex-wrap:wrap;gap:12px}svg{background:#fff;border:1px solid #eee}
svg .title{font-size:13px;font-weight:600}svg .tick{font-size:10px;fill:#555}svg .axis{font-size:11px;fill:#333}
svg .legend{font-size:11px}svg .frame{fill:none;stroke:#ccc}svg .ref{stroke:#999;stroke-dasharray:3,3}
svg .event{stroke:#d62728;stroke-opacity:0.35}code{font-size:12px}
"""


def render_html(
    summary: RunSummary,
    fail_on: str | None = None,
    other: RunSummary | None = None,
    names: tuple[str, str] = ("run", "other"),
) -> str:
    """The report page, with ``other`` overlaid when given (``--compare``); every string from a log is escaped."""
    from gradprobe.report.interactive import plotly_bundle, render_interactive

    bundle = plotly_bundle()
    if bundle is not None:
        return render_interactive(summary, bundle, fail_on, other, names)
    return render_static(summary, fail_on, other, names)


def _training_series(run: RunSummary, label: str, dashed: bool, column: int, what: str) -> Series:
    """One run's loss (column 1) or gradient norm (column 2) over training, for the static charts."""
    rows = list(run.training)
    name = f"{label}: {what}" if dashed or label != "run" else what
    return Series(name, [row[0] for row in rows], [row[column] for row in rows], dashed=dashed)


def render_static(
    summary: RunSummary,
    fail_on: str | None = None,
    other: RunSummary | None = None,
    names: tuple[str, str] = ("run", "other"),
) -> str:
    """The static SVG page (no plotly installed), with ``other`` overlaid (dashed) when given."""
    fail_on = fail_on or summary.fail_on
    e = escape
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>", "<title>gradprobe report</title>"]
    out.append(f"<style>{STYLE}</style></head><body>")
    out.extend(run_heading(summary))
    note = "pip install 'gradprobe[html]' for the interactive report (zoom, hover, trends over training)"
    out.append(f"<p><i>Static page: {note}.</i></p>")
    if other is not None:
        compared = ", ".join(e(log.path) for log in other.logs)
        out.append(f"<p>Compared with {e(names[1])}: {compared} ({other.steps} steps); its lines are dashed.</p>")
    out.extend(summary_box(summary, fail_on))

    out.append("<h2>Findings</h2>")
    out.extend(findings_table(summary.findings))
    if other is not None:
        out.append(f"<h2>Findings of {e(names[1])}</h2>")
        out.extend(findings_table(other.findings))

    out.append("<h2>Training</h2><div class='charts'>")
    runs = [(names[0], summary, False), *([(names[1], other, True)] if other is not None else [])]
    clip_steps = [step for step, name, applied in summary.fix_steps if applied and step is not None]
    out.append(
        line_chart(
            "Gradient norm over training (red: fixes applied)",
            [_training_series(run, label, dashed, 2, "||grad||") for label, run, dashed in runs],
            x_label="training step",
            y_label="total gradient norm",
            log_y=True,
            vlines=clip_steps,
        )
    )
    out.append(
        line_chart(
            "Loss",
            [_training_series(run, label, dashed, 1, "loss") for label, run, dashed in runs],
            x_label="training step",
            y_label="loss",
        )
    )
    out.append("</div>" + caption("training"))

    for name, layer in summary.layers.items():
        latest = layer.latest
        if not latest:
            continue
        out.append(f"<h2>{e(name)} <small>({e(str(layer.mode))}, {layer.probes} deep probes)</small></h2>")
        horizon = latest.get("horizon")
        rate = latest.get("rate")
        facts = [f"latest deep probe at step {e(str(latest.get('step')))}", f"T = {e(str(latest.get('seq_len')))}"]
        facts.append("horizon " + e(horizon_text(horizon, latest.get("seq_len"))))
        if rate is not None:
            facts.append(f"fitted x{math.exp(float(rate)):.3f} per step")
        if layer.saturation.get("fractions"):
            facts.append(
                "saturation "
                + ", ".join(f"{e(str(g))} {float(v):.0%}" for g, v in layer.saturation["fractions"].items())
            )
        out.append("<p>" + "; ".join(facts) + "</p><div class='charts'>")
        stride, grid = layer.heatmap.grid()
        rows = [(f"step {step}", norms) for step, norms in grid]
        out.append(
            heatmap(
                "||dL/dh_t||: time step x training step",
                rows,
                x_label="time step t" if stride == 1 else f"time step t (largest of each {stride})",
                y_label="training step",
                x_step=stride,
            )
        )
        ks, profile = on_time_axis(latest["profile"])  # floats or None (report.summary.readable_deep)
        series = [Series("measured", ks, profile)]
        compared_layer = other.layers.get(name) if other is not None else None
        if compared_layer is not None and compared_layer.latest:
            other_ks, other_profile = on_time_axis(compared_layer.latest["profile"])
            series.append(Series(f"{names[1]}: measured", other_ks, other_profile, dashed=True, color="#7f7f7f"))
        if rate is not None and profile:
            series.append(
                Series(
                    f"fit x{math.exp(float(rate)):.3f}/step", ks, [math.exp(float(rate) * k) for k in ks], dashed=True
                )
            )
        out.append(
            line_chart(
                "Propagation profile ||v^T dS_T/dS_(T-k)||",
                series,
                x_label="steps back k",
                y_label="signal",
                log_y=True,
                vlines=[float(horizon)] if horizon is not None else (),
            )
        )
        ts, jac = on_time_axis(latest["jacobian_norms"])
        jacobians = [Series("||dS_t/dS_(t-1)||", ts, jac)]
        if compared_layer is not None and compared_layer.latest:
            other_ts, other_jac = on_time_axis(compared_layer.latest["jacobian_norms"])
            jacobians.append(Series(f"{names[1]}", other_ts, other_jac, dashed=True, color="#7f7f7f"))
        out.append(
            line_chart(
                "Per-step Jacobian spectral norm",
                jacobians,
                x_label="time step t",
                y_label="spectral norm",
                hline=1.0,
            )
        )
        out.append("</div>" + "".join(caption(kind) for kind in ("heatmap", "profile", "jacobian")))

    if summary.problems:
        out.append("<h2>Problems reading the log</h2><ul>")
        out.extend(f"<li>{e(path)}: {e(str(problem))}</li>" for path, problem in summary.problems[:100])
        out.append("</ul>")
    out.append("</body></html>\n")
    return "\n".join(out)
