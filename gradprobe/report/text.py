"""The terminal report."""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradprobe.findings import SEVERITIES
from gradprobe.printable import one_line
from gradprobe.report.summary import RunSummary, horizon_text, seen_when

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], width: int = 48) -> str:
    """Log-scale sparkline; ``·`` marks zero or missing values."""
    if not values:
        return ""
    buckets = max(1, math.ceil(len(values) / width))
    points = []
    for start in range(0, len(values), buckets):
        chunk = [v for v in values[start : start + buckets] if v is not None and math.isfinite(v) and v > 0]
        points.append(math.log10(max(chunk)) if chunk else None)
    present = [p for p in points if p is not None]
    if not present:
        return "·" * len(points)
    low, high = min(present), max(present)
    span = (high - low) or 1.0
    return "".join("·" if p is None else BLOCKS[min(7, int((p - low) / span * 7.999))] for p in points)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value[:6]) + (", ..." if len(value) > 6 else "") + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def render_text(
    summary: RunSummary,
    fail_on: str | None = None,
    other: RunSummary | None = None,
    names: tuple[str, str] = ("run", "other"),
) -> str:
    """A readable summary: findings by severity and layer, per-layer gradient profiles, training figures.

    With ``other`` (``--compare``), a last section sets the two runs side by side.
    """
    text = _render_one(summary, fail_on)
    if other is None:
        return text
    return text + "\n" + _comparison(summary, other, names, fail_on or summary.fail_on)


def _comparison(summary: RunSummary, other: RunSummary, names: tuple[str, str], fail_on: str) -> str:
    """The two runs side by side: loss, largest gradient norm, horizons, findings."""
    lines = [f"Compared with {names[1]}:"]
    for name, run in ((names[0], summary), (names[1], other)):
        worst = run.max_grad_norm
        counts = ", ".join(f"{sum(f.severity == s for f in run.findings)} {s}" for s in ("error", "warning", "info"))
        lines.append(
            f"  {name}: {run.steps} steps, {run.loss_text() or 'no loss'}, "
            f"max grad norm {'n/a' if worst is None else f'{worst:.4g}'}; findings {counts}; "
            f"verdict {run.verdict(fail_on)}"
        )
    for layer in sorted(set(summary.layers) | set(other.layers)):
        horizons = []
        for run in (summary, other):
            latest = run.layers[layer].latest if layer in run.layers else {}
            horizons.append(horizon_text(latest.get("horizon"), latest.get("seq_len")) if latest else "n/a")
        lines.append(f"  {layer}: horizon {horizons[0]} vs {horizons[1]}")
    return "\n".join(one_line(line) for line in lines) + "\n"  # a log string cannot forge a line


def _render_one(summary: RunSummary, fail_on: str | None = None) -> str:
    fail_on = fail_on or summary.fail_on
    meta = summary.meta
    lines = []
    sources = ", ".join(f"{log.path}" + (f" (rank {log.rank})" if log.rank is not None else "") for log in summary.logs)
    lines.append(f"gradprobe report: {sources}")
    if meta:
        steps = f"steps {summary.first_step}-{summary.last_step}" if summary.steps else "no training steps"
        settings = meta.get("settings") or {}
        lines.append(
            f"  model {meta.get('model')}, {steps}, gradprobe {meta.get('gradprobe')}, torch {meta.get('torch')}, "
            f"deep probe every {settings.get('every')} steps, fix={settings.get('fix')}"
        )
    counts = {s: sum(f.severity == s for f in summary.findings) for s in SEVERITIES}
    lines.append("")
    lines.append(f"Findings: {counts['error']} errors, {counts['warning']} warnings, {counts['info']} info")
    for severity in reversed(SEVERITIES):
        group = [f for f in summary.findings if f.severity == severity]
        if not group:
            continue
        lines.append(f"  {severity.upper()}")
        for layer in dict.fromkeys(f.layer for f in group):
            lines.append(f"    {layer or '(whole model)'}")
            for f in (f for f in group if f.layer == layer):
                lines.append(f"      {f.code} {f.name}{seen_when(f)}: {f.message}")
                if f.evidence:
                    lines.append("          evidence: " + ", ".join(f"{k}={_fmt(v)}" for k, v in f.evidence.items()))
                if f.fix:
                    lines.append(f"          fix: {f.fix}")
    if summary.layers:
        lines.append("")
        lines.append("Gradient vs time step (latest deep probe; ||dL/dh_t||, log scale, t = 0 on the left):")
        width = max(len(name) for name in summary.layers)
        for name, layer_summary in summary.layers.items():
            latest = layer_summary.latest
            if not latest:
                continue
            rate = latest.get("rate")
            detail = f"T={latest.get('seq_len')}, horizon {horizon_text(latest.get('horizon'), latest.get('seq_len'))}"
            if rate is not None:
                detail += f", x{math.exp(float(rate)):.2f}/step"
            lyapunov = latest.get("lyapunov") or []
            if lyapunov and isinstance(lyapunov[0], (int, float)):
                detail += f", lambda1 {float(lyapunov[0]):+.3f}/step"
            norms = latest["grad_norms"]  # floats or None (report.summary.readable_deep)
            lines.append(f"  {name:<{width}}  {sparkline(norms)}  {detail}")
        lines.append(
            "  (horizon: steps back until the gradient's signal falls below 1e-3 of its size; xR/step: the share "
            "of it kept per step back; lambda1 > 0: the state dynamics expand and gradients grow, < 0: they contract)"
        )
    if summary.steps:
        lines.append("")
        count = (
            f"{summary.steps} step events across {len(summary.logs)} logs"
            if len(summary.logs) > 1
            else f"{summary.steps} steps"
        )
        training = f"Training: {count}"
        if summary.loss_text():
            training += f", {summary.loss_text()}"
        if summary.max_grad_norm is not None:
            training += f", max grad norm {summary.max_grad_norm:.4g} at step {summary.max_grad_step}"
        lines.append(training)
        if summary.fixes:
            lines.append("  fixes: " + ", ".join(f"{name} x{count}" for name, count in summary.fixes.items()))
    for log in summary.logs:
        if log.error:
            lines.append(f"Probe error in {log.path} at step {log.error.get('step')}: {log.error.get('message')}")
    if summary.problems:
        lines.append("")
        lines.append("Problems reading the log (skipped):")
        lines.extend(f"  {path}: {problem}" for path, problem in summary.problems[:20])
        if len(summary.problems) > 20:
            lines.append(f"  ... and {len(summary.problems) - 20} more")
    lines.append("")
    lines.append(f"Verdict: {summary.verdict(fail_on)} (fail-on {fail_on})")
    return "\n".join(one_line(line) for line in lines) + "\n"  # a log string cannot forge a line
