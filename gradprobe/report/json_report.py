"""The JSON report (``gradprobe report --format json``).

Schema ``gradprobe-report/1`` (stable; additions only within a version)::

    {
      "schema": "gradprobe-report/1",
      "verdict": {"fail_on": "warning", "failed": false, "worst": "warning" | null,
                  "says": "FAIL" | "NOT MEASURED" | "ok"},
      "logs": [{"path": str, "events": int, "rank": int | null,
                "problems": [{"line": int, "message": str}],
                "probe_error": {"step": int, "where": str, "message": str} | null}],
      "run": {"model": str | null, "gradprobe": str | null, "torch": str | null, "settings": {...}},
      "training": {"steps": int, "first_step": int | null, "last_step": int | null,
                   "first_loss": float | null, "last_loss": float | null (null when the last loss was non-finite),
                   "last_finite_loss": float | null, "nonfinite_losses": int, "first_nonfinite_loss_step": int | null,
                   "min_loss": float | null,
                   "max_grad_norm": float | null, "max_grad_step": int | null,
                   "fixes": {name: count}, "first_nonfinite": {...} | null},
      "layers": {track: {"mode": str | null, "probes": int, "step": int | null, "seq_len": int | null,
                         "horizon": float | null, "rate": float | null,
                         "grad_norms": [float], "profile": [float], "jacobian_norms": [float],
                         "lyapunov": [float] (top exponents, natural log per step, largest first),
                         "saturation": {gate: float}}},
      "findings": [{"code", "name", "severity", "layer", "step", "message", "evidence", "fix"}],
      "compare": {the same object for the run given with --compare, without "compare"}   (only with --compare)
    }

Non-finite numbers are written as the strings "nan", "inf" and "-inf".
"""

from __future__ import annotations

import json
from typing import Any

from gradprobe.events import json_safe
from gradprobe.report.summary import RunSummary

SCHEMA = "gradprobe-report/1"


def report_dict(summary: RunSummary, fail_on: str | None = None) -> dict[str, Any]:
    """The report as plain data (see the module docstring for the schema)."""
    fail_on = fail_on or summary.fail_on
    meta = summary.meta
    layers = {}
    for name, layer in summary.layers.items():
        latest = layer.latest
        layers[name] = {
            "mode": layer.mode,
            "probes": layer.probes,
            "step": latest.get("step"),
            "seq_len": latest.get("seq_len"),
            "horizon": latest.get("horizon"),
            "rate": latest.get("rate"),
            "grad_norms": latest.get("grad_norms", []),
            "profile": latest.get("profile", []),
            "jacobian_norms": latest.get("jacobian_norms", []),
            "lyapunov": latest.get("lyapunov", []),
            "saturation": layer.saturation.get("fractions", {}),
        }
    cleaned: dict[str, Any] = json_safe(
        {
            "schema": SCHEMA,
            "verdict": {
                "fail_on": fail_on,
                "failed": summary.fails(fail_on),
                "worst": summary.worst(),
                "says": summary.verdict(fail_on),
            },
            "logs": [
                {
                    "path": log.path,
                    "events": log.events,
                    "rank": log.rank,
                    "problems": [{"line": p.line, "message": p.message} for p in log.problems],
                    "probe_error": None
                    if log.error is None
                    else {k: log.error.get(k) for k in ("step", "where", "message")},
                }
                for log in summary.logs
            ],
            "run": {
                "model": meta.get("model"),
                "gradprobe": meta.get("gradprobe"),
                "torch": meta.get("torch"),
                "settings": meta.get("settings", {}),
            },
            "training": {
                "steps": summary.steps,
                "first_step": summary.first_step,
                "last_step": summary.last_step,
                "first_loss": summary.first_loss,
                "last_loss": summary.last_loss if summary.last_loss_finite else None,
                "last_finite_loss": summary.last_loss,
                "nonfinite_losses": summary.nonfinite_losses,
                "first_nonfinite_loss_step": summary.first_nonfinite_loss_step,
                "min_loss": summary.min_loss,
                "max_grad_norm": summary.max_grad_norm,
                "max_grad_step": summary.max_grad_step,
                "fixes": dict(summary.fixes),
                "first_nonfinite": summary.first_nonfinite,
            },
            "layers": layers,
            "findings": [f.to_dict() for f in summary.findings],
        }
    )
    return cleaned


def render_json(summary: RunSummary, fail_on: str | None = None, other: RunSummary | None = None) -> str:
    """The JSON report; ``other`` (``--compare``) goes under ``"compare"``, judged on its own."""
    data = report_dict(summary, fail_on)
    if other is not None:
        data["compare"] = report_dict(other, fail_on)
    return json.dumps(data, indent=2, allow_nan=False) + "\n"
