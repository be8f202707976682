"""The pieces both HTML pages share (static and interactive): the heading, the verdict line, the findings table.

Every string that comes from a log is escaped.
"""

from __future__ import annotations

from html import escape

from gradprobe.findings import SEVERITIES, Finding, severity_rank
from gradprobe.report.summary import RunSummary


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def run_heading(summary: RunSummary) -> list[str]:
    """The page title and the line naming the logs, versions, steps and loss (escaped)."""
    e = escape
    meta = summary.meta
    sources = ", ".join(
        e(log.path) + (f" (rank {e(str(log.rank))})" if log.rank is not None else "") for log in summary.logs
    )
    return [
        f"<h1>gradprobe report: {e(str(meta.get('model', 'run')))}</h1>",
        (
            f"<p>Logs: {sources}. gradprobe {e(str(meta.get('gradprobe')))}, torch {e(str(meta.get('torch')))}, "
            f"{summary.steps} steps{'; ' + e(summary.loss_text()) if summary.loss_text() else ''}.</p>"
        ),
    ]


def verdict_line(summary: RunSummary, fail_on: str) -> str:
    """``Verdict: FAIL|NOT MEASURED|ok (fail-on ...)`` with the count of findings per severity."""
    said = summary.verdict(fail_on)
    counts = ", ".join(f"{sum(f.severity == s for f in summary.findings)} {s}" for s in reversed(SEVERITIES))
    return (
        f"<p class='verdict-{'ok' if said == 'ok' else 'fail'}'>Verdict: <b>{said}</b> "
        f"(fail-on {escape(fail_on)}); {counts}</p>"
    )


def _steps_seen(finding: Finding) -> str:
    if finding.span is not None:
        return f"{finding.span[0]}-{finding.span[1]}"
    return str(finding.step) if finding.step is not None else "static"


def findings_table(findings: list[Finding]) -> list[str]:
    """The findings as an HTML table (every string escaped), or a line saying there are none."""
    e = escape
    if not findings:
        return ["<p>No findings.</p>"]
    columns = ("severity", "code", "layer", "steps seen", "message", "evidence", "fix")
    out = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"]
    for f in findings:
        evidence = "<br>".join(f"{e(str(k))}={e(_value(v))}" for k, v in f.evidence.items())
        out.append(
            f"<tr><td class='{e(f.severity)}'>{e(f.severity)}</td><td>{e(f.code)} {e(f.name)}</td>"
            f"<td>{e(str(f.layer or ''))}</td><td>{e(_steps_seen(f))}</td>"
            f"<td>{e(f.message)}</td><td>{evidence}</td><td>{e(f.fix or '')}</td></tr>"
        )
    out.append("</table>")
    return out


SUMMARY_OPEN = (
    "<div class='summary' style='border:2px solid #999;border-radius:6px;padding:6px 16px;margin:12px 0;"
    "background:#fafafa'>"
)

#: What a healthy run looks like on each chart, one sentence under it.
CAPTIONS = {
    "trend": (
        "Healthy: the horizon reaches the steps the task needs (dashed red) and holds there over training; "
        "it is drawn at most at T (dashed grey), beyond which it is an extrapolation."
    ),
    "heatmap": (
        "Healthy: the colour fades slowly from right (the loss) to left (the first steps); "
        "a dark left side means the early steps get no gradient."
    ),
    "profile": (
        "Healthy: the signal falls slowly with the steps back k (a straight line on this log axis is a constant "
        "share kept per step); a steep fall is a vanishing gradient, a rise an exploding one."
    ),
    "jacobian": ("Healthy: per-step norms near 1; well below 1 shrink the gradient at every step, above 1 grow it."),
    "lyapunov": (
        "Healthy: lambda1 at or a little below 0; above 0 the state dynamics expand and gradients explode, "
        "far below they contract and vanish."
    ),
    "saturation": "Healthy: low shares; gates pinned at 0 or 1 pass no gradient.",
    "training": "Healthy: the loss falls and the gradient norm stays within a band, without repeated spikes.",
}


def caption(kind: str) -> str:
    """The sentence under a chart (static text, nothing from a log)."""
    return f"<p class='caption'><i>{escape(CAPTIONS[kind])}</i></p>"


def summary_box(summary: RunSummary, fail_on: str) -> list[str]:
    """The top of the page: the verdict, each finding with its step and its fix as code, and the one call that
    applies the structural fixes (every string from a log escaped)."""
    e = escape
    out = [
        SUMMARY_OPEN,
        verdict_line(summary, fail_on),
    ]
    ordered = sorted(summary.findings, key=lambda f: -severity_rank(f.severity))
    if not ordered:
        out.append("<p>No findings: every measured layer looks healthy.</p></div>")
        return out
    out.append("<ul>")
    for f in ordered:
        where = f" in {e(f.layer)}" if f.layer else ""
        if f.span is not None:
            since = f" (seen from step {f.span[0]} to step {f.span[1]})"
        else:
            since = f" (seen at step {e(str(f.step))})" if f.step is not None else " (static: the model as built)"
        out.append(
            f"<li><b class='{e(f.severity)}'>{e(f.code)} {e(f.name)}</b> [{e(f.severity)}]{where}{since}: {e(f.message)}"
        )
        if f.fix:
            out.append(f"<pre><code>{e(f.fix)}</code></pre>")
        out.append("</li>")
    out.append("</ul>")
    if any(action.safety == "unsafe" for f in ordered for action in f.fixes):
        out.append(
            "<p>Do this: the structural fixes above run on your model, from its initial weights, with</p>"
            "<pre><code>gradprobe.fixes.apply(model, probe.findings)</code></pre>"
        )
    if any(action.safety == "safe" for f in ordered for action in f.fixes):
        out.append(
            "<p>The safe ones (clipping, a non-finite guard) run every step with</p>"
            '<pre><code>gradprobe.attach(model, optimizer=opt, fix="auto")</code></pre>'
        )
    out.append("</div>")
    return out
