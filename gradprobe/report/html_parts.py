"""The pieces both HTML pages share (static and interactive): the heading, the verdict line, the findings table.

Every string that comes from a log is escaped.
"""

from __future__ import annotations

from html import escape

from gradprobe.findings import SEVERITIES, Finding
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


def findings_table(findings: list[Finding]) -> list[str]:
    """The findings as an HTML table (every string escaped), or a line saying there are none."""
    e = escape
    if not findings:
        return ["<p>No findings.</p>"]
    out = [
        "<table><tr><th>severity</th><th>code</th><th>layer</th><th>step</th><th>message</th><th>evidence</th><th>fix</th></tr>"
    ]
    for f in findings:
        evidence = "<br>".join(f"{e(str(k))}={e(_value(v))}" for k, v in f.evidence.items())
        out.append(
            f"<tr><td class='{e(f.severity)}'>{e(f.severity)}</td><td>{e(f.code)} {e(f.name)}</td>"
            f"<td>{e(str(f.layer or ''))}</td><td>{e(str(f.step if f.step is not None else ''))}</td>"
            f"<td>{e(f.message)}</td><td>{evidence}</td><td>{e(f.fix or '')}</td></tr>"
        )
    out.append("</table>")
    return out
