"""Assertions for test suites: ``assert_healthy(model, inputs)``.

Works with or without the pytest plugin; under pytest, the
``@pytest.mark.gradprobe(...)`` marker of the running test supplies
thresholds, suppressions and the failing severity, and every checked test's
findings are collected for ``--gradprobe-report``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from gradprobe import health
from gradprobe.api import Report, check
from gradprobe.config import Options, renamed
from gradprobe.findings import Finding, failing


class GradientHealthError(AssertionError):
    """Raised by :func:`assert_healthy`; the message lists every finding."""

    def __init__(self, report: Report, failing: list[Finding], fail_on: str) -> None:
        self.report = report
        self.findings = failing
        super().__init__(format_findings(failing, fail_on, report))


def format_findings(findings: list[Finding], fail_on: str, report: Report | None = None) -> str:
    """The assertion message: one block per finding with its evidence and fix."""
    lines = [f"gradient health check failed: {len(findings)} finding(s) at or above {fail_on}"]
    for f in findings:
        where = f" in {f.layer}" if f.layer else ""
        lines.append(f"  {f.code} {f.name} [{f.severity}]{where}: {f.message}")
        if f.evidence:
            shown = ", ".join(f"{k}={_short(v)}" for k, v in f.evidence.items())
            lines.append(f"      evidence: {shown}")
        if f.fix:
            lines.append(f"      fix: {f.fix}")
    if report is not None and report.layers:
        horizons = ", ".join(
            f"{name} {'none' if p.horizon is None else f'{p.horizon:.0f}'}" for name, p in report.layers.items()
        )
        lines.append(f"  measured horizons (steps): {horizons}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def assert_healthy(
    model: nn.Module,
    inputs: Any,
    loss_fn: Callable[[Any], Tensor] | None = None,
    allow: Iterable[str] = (),
    horizon: int | None = None,
    *,
    dependency_length: int | None = None,
    fail_on: str | None = None,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    config: Any = None,
    **check_kwargs: Any,
) -> Report:
    """Deep-probe ``model`` on ``inputs`` and fail with a readable message if it is unhealthy.

    Args:
        model: The recurrent model.
        inputs: One batch (see :func:`gradprobe.check`).
        loss_fn: Maps the output to a scalar loss (default: a fixed random projection).
        allow: Rule codes that may fire without failing the test.
        horizon: Deprecated name of ``dependency_length``.
        dependency_length: The dependency length (steps) the model must carry
            gradients over; GP101 fails when the measured horizon is shorter
            (default: the marker's, else ``[tool.gradprobe]``'s, else undeclared).
        fail_on: Lowest failing severity (default: the marker's, else the pytest option or
            ini ``gradprobe_fail_on``, else ``fail-on`` of ``[tool.gradprobe]``, else ``warning``).
        thresholds: Per-rule thresholds, merged over the marker's.
        config: Rule configuration (default: pyproject.toml's ``[tool.gradprobe]``).
        **check_kwargs: Passed to :func:`gradprobe.check` (``cells``, probe settings).

    Returns:
        The :class:`gradprobe.Report` when healthy.

    Raises:
        GradientHealthError: Findings at or above ``fail_on`` that ``allow`` does not cover.
    """
    __tracebackhide__ = True  # pytest shows the test's line and the findings, not this helper
    test = health.current()
    marker = test.options
    merged = {code: dict(values) for code, values in (marker.thresholds or {}).items()}
    for code, values in (thresholds or {}).items():
        merged.setdefault(code, {}).update(values)
    need = renamed(dependency_length, horizon, "horizon")
    opts = Options.of(marker, config=config, thresholds=merged, dependency_length=need)
    report = check(model, inputs, loss_fn, options=replace(opts, fail_on=None), **check_kwargs)
    if test.collect is not None:
        test.collect(report)
    level = fail_on or marker.fail_on or report.fail_on
    unhealthy = failing(report.findings, level, allow)
    if unhealthy:
        raise GradientHealthError(report, unhealthy, level)
    return report
