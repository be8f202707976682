"""Stream one or more run logs into a :class:`RunSummary` (constant memory in the log length)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradprobe.config import Config, ConfigError, from_mapping, load_pyproject
from gradprobe.distributed import expand_rank_logs
from gradprobe.events import LogFormatError, LogProblem, iter_events, number
from gradprobe.findings import DEFAULT_FAIL_ON, Finding, failing, severity_rank, verdict
from gradprobe.report.series import Downsampled, MinMaxSeries, TimeRows
from gradprobe.rules.engine import RuleEngine, sort_findings

#: The per-step series of a ``deep`` event.
DEEP_SERIES = ("grad_norms", "profile", "jacobian_norms", "lyapunov")


_ALL_FLOATS = frozenset({float})


def seen_when(finding: Finding) -> str:
    """`` steps 0-575 (first seen at 0)`` for a finding seen over several steps, `` step 575`` for one, ``""`` for
    a static one."""
    if finding.span is not None:
        first, last = finding.span
        return f" steps {first}-{last} (first seen at step {first})"
    return f" step {finding.step}" if finding.step is not None else ""


def horizon_text(horizon: Any, seq_len: Any) -> str:
    """A gradient horizon as the reports print it: ``none (no decay)``, ``> T (the whole sequence of 100)``
    when it reaches past the sequence (an extrapolation, not a measurement), else the steps."""
    steps = number(horizon)
    if steps is None or not math.isfinite(steps):
        return "none (no decay)"
    length = number(seq_len)
    if length is not None and steps > length:
        return f"> T (the whole sequence of {length:.0f})"
    return f"{steps:.0f} steps"


def readable_deep(event: dict[str, Any]) -> dict[str, Any]:
    """A ``deep`` event as the reports read it: each series a list of floats (``None`` for a missing value; an
    empty list where the log left the series out or null), ``horizon`` and ``rate`` floats or ``None``."""
    out = dict(event)
    for key in DEEP_SERIES:
        values = event.get(key)
        if not isinstance(values, list):
            out[key] = []
        elif _ALL_FLOATS.issuperset(map(type, values)):  # the common case: already floats, read as they are
            out[key] = values
        else:
            out[key] = [number(v) for v in values]
    out["horizon"], out["rate"] = number(event.get("horizon")), number(event.get("rate"))
    return out


@dataclass
class LayerSummary:
    """What the report shows of one track."""

    name: str
    mode: str | None = None
    #: The latest deep event as logged; :attr:`latest` reads it as the reports do.
    latest_event: dict[str, Any] = field(default_factory=dict)
    heatmap: TimeRows = field(default_factory=TimeRows)  # grad_norms per deep probe, binned over time
    saturation: dict[str, Any] = field(default_factory=dict)  # the latest saturation event
    probes: int = 0
    trend: Downsampled = field(default_factory=lambda: Downsampled(500))  # (step, horizon, rate, seq_len, lyapunov)
    saturation_trend: Downsampled = field(default_factory=lambda: Downsampled(500))  # (step, {gate: fraction})
    _readable: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def latest(self) -> dict[str, Any]:
        """The latest deep event as the reports read it (:func:`readable_deep`; ``{}`` before one), made on first
        use: a long log's earlier deep events are never converted."""
        if self._readable is None:
            self._readable = readable_deep(self.latest_event) if self.latest_event else {}
        return self._readable

    def add_deep(self, event: dict[str, Any]) -> None:
        """Take ``event`` as the latest deep event."""
        self.latest_event, self._readable = event, None
        self.mode = event.get("mode")
        self.probes += 1


@dataclass
class LogSummary:
    """One log file: where it came from and what was wrong with it."""

    path: str
    events: int = 0
    problems: list[LogProblem] = field(default_factory=list)
    rank: int | None = None
    world_size: Any = None
    error: dict[str, Any] | None = None
    metas: int = 0


@dataclass
class RunSummary:
    """Everything the renderers need, built in one streaming pass."""

    logs: list[LogSummary] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    first_step: int | None = None
    last_step: int | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    min_loss: float | None = None
    nonfinite_losses: int = 0
    first_nonfinite_loss_step: int | None = None
    last_loss_finite: bool = True
    max_grad_norm: float | None = None
    max_grad_step: int | None = None
    training: Downsampled = field(default_factory=Downsampled)  # (step, loss, grad_norm)
    loss_series: MinMaxSeries = field(default_factory=MinMaxSeries)
    grad_norm_series: MinMaxSeries = field(default_factory=MinMaxSeries)
    #: Per gated weight (``weight_ih*``, ``weight_hh*``) and gate, its gradient norm over training.
    gate_series: dict[str, dict[str, MinMaxSeries]] = field(default_factory=dict)
    clip_series: MinMaxSeries = field(default_factory=lambda: MinMaxSeries(500))  # the loop's clip threshold
    fixes: dict[str, int] = field(default_factory=dict)
    fix_steps: Downsampled = field(default_factory=lambda: Downsampled(500))  # (step, name, applied)
    layers: dict[str, LayerSummary] = field(default_factory=dict)
    first_nonfinite: dict[str, Any] | None = None
    findings: list[Finding] = field(default_factory=list)
    fail_on: str = DEFAULT_FAIL_ON  # of the configuration the logs were judged with
    #: Whether the series over training (the HTML report's charts) are built; a text or JSON report skips them.
    charts: bool = True

    @property
    def problems(self) -> list[tuple[str, LogProblem]]:
        return [(log.path, p) for log in self.logs for p in log.problems]

    def worst(self) -> str | None:
        """The most severe finding's severity, or None."""
        return max((f.severity for f in self.findings), key=severity_rank, default=None)

    def fails(self, fail_on: str | None = None) -> bool:
        """Whether a finding reaches ``fail_on`` (default: the configuration's), or a layer was not measured."""
        return bool(failing(self.findings, fail_on or self.fail_on))

    def verdict(self, fail_on: str | None = None) -> str:
        """``FAIL``, ``NOT MEASURED`` or ``ok`` (:func:`gradprobe.findings.verdict`)."""
        return verdict(self.findings, fail_on or self.fail_on)

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "step":
            self.add_step(event)
        elif kind == "meta" and not self.meta:
            self.meta = event
        elif kind == "deep":
            layer = self._layer(event["layer"])
            layer.add_deep(event)
            if not self.charts:
                return
            latest = layer.latest
            layer.heatmap.add(event.get("step"), latest["grad_norms"])
            trend = (latest["horizon"], latest["rate"], event.get("seq_len"), latest["lyapunov"])
            layer.trend.add((event.get("step"), *trend))
        elif kind == "saturation":
            layer = self._layer(event["layer"], event.get("mode"))
            layer.saturation = event
            if not self.charts:
                return
            fractions = event.get("fractions") or {}
            layer.saturation_trend.add((event.get("step"), {str(g): number(v) for g, v in fractions.items()}))
        elif kind == "fix":
            name = str(event.get("name"))
            self.fixes[name] = self.fixes.get(name, 0) + 1
            self.fix_steps.add((event.get("step"), name, bool(event.get("applied"))))

    def _layer(self, name: str, mode: str | None = None) -> LayerSummary:
        layer = self.layers.get(name)
        if layer is None:
            layer = self.layers[name] = LayerSummary(name, mode)
        return layer

    def add_step(self, event: dict[str, Any]) -> None:
        """Count one ``step`` event (what :meth:`add` does with one)."""
        step, loss, norm = event.get("step"), event.get("loss"), event.get("grad_norm")
        if type(loss) is not float:  # a float as read most of the time: no call
            loss = number(loss)
        if type(norm) is not float:
            norm = number(norm)
        self.steps += 1
        if self.first_step is None:
            self.first_step = step
        self.last_step = step
        if loss is not None and math.isfinite(loss):
            if self.first_loss is None:
                self.first_loss = loss
            self.last_loss = loss
            if self.min_loss is None or loss < self.min_loss:
                self.min_loss = loss
            self.last_loss_finite = True
        elif loss is not None:
            self.nonfinite_losses += 1
            self.last_loss_finite = False
            if self.first_nonfinite_loss_step is None:
                self.first_nonfinite_loss_step = step
        if norm is not None and math.isfinite(norm) and (self.max_grad_norm is None or norm > self.max_grad_norm):
            self.max_grad_norm, self.max_grad_step = norm, step
        if event.get("nonfinite") and self.first_nonfinite is None:
            self.first_nonfinite = {"step": step, **event["nonfinite"]}
        if not self.charts:
            return
        self.training.add((step, loss, norm))
        self.loss_series.add(step, loss)
        self.grad_norm_series.add(step, norm)
        for param, gates in (event.get("gates") or {}).items():
            per_gate = self.gate_series.get(param)
            if per_gate is None:
                if "weight_" not in param:  # the weights' gates are plotted; the biases' would double the charts
                    continue
                per_gate = self.gate_series[param] = {}
            for gate, value in gates.items():
                series = per_gate.get(gate)
                if series is None:
                    series = per_gate[gate] = MinMaxSeries(1000)
                series.add(step, number(value))
        clip = event.get("clip")
        if isinstance(clip, dict):
            self.clip_series.add(step, number(clip.get("threshold")))

    def loss_text(self) -> str:
        """``loss A -> B (min C)``, saying so when the loss ended non-finite or turned non-finite on the way."""
        if self.first_loss is None and not self.nonfinite_losses:
            return ""
        start = "n/a" if self.first_loss is None else f"{self.first_loss:.4g}"
        end = "non-finite" if not self.last_loss_finite else f"{self.last_loss:.4g}"
        text = f"loss {start} -> {end}"
        if self.min_loss is not None:
            text += f" (min {self.min_loss:.4g})"
        if self.nonfinite_losses:
            text += f"; non-finite from step {self.first_nonfinite_loss_step} ({self.nonfinite_losses} of {self.steps} steps)"
        return text


def summarize_logs(
    paths: Iterable[str | os.PathLike[str]],
    config: Config | Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    charts: bool = True,
) -> RunSummary:
    """Read the logs (one per rank for distributed runs) and judge them with the rules.

    Each log gets its own rule engine; findings are merged per (code, layer),
    keeping the most severe, with ``evidence["ranks"]`` when several logs agree.

    Args:
        paths: Run logs. A path that does not exist stands for its rank
            files (``run.log`` -> ``run.rank0.log``, ``run.rank1.log``, ...), as a
            distributed run writes them.
        config: Rule configuration. ``None``: the configuration the run recorded
            in its meta event (so a log is judged as it was live, wherever the
            report runs), else pyproject.toml of the current directory.
        progress: Called with the number of bytes read since the last call.
        charts: Build the series over training that the HTML report plots
            (a text or JSON report passes ``False`` and reads the log faster).

    Raises:
        gradprobe.events.LogFormatError: A file is missing, is not a run log,
            or holds no readable event.
    """
    summary = RunSummary(charts=charts)
    per_key: dict[tuple[str, str | None], list[tuple[Finding, int | None]]] = {}
    for path in [found for given in paths for found in expand_rank_logs(given)]:
        log = LogSummary(str(path))
        engine: RuleEngine | None = None
        for event in iter_events(path, log.problems, progress):
            log.events += 1
            kind = event["kind"]
            if kind == "step" and engine is not None:  # most lines: straight to what reads them
                summary.add_step(event)
                engine.feed(event)
                continue
            if engine is None:
                engine = _engine_for(config, event, log)
                summary.fail_on = engine.config.fail_on
            if kind == "meta":
                log.metas += 1
                if log.metas > 1:
                    raise LogFormatError(
                        f"{path} holds more than one run (a second meta event, event {log.events}): two runs wrote "
                        "this file; report each run's own log"
                    )
                log.rank = event.get("rank")
                log.world_size = event.get("world_size")
            elif kind == "error" and log.error is None:
                log.error = event
            summary.add(event)
            engine.feed(event)
        if engine is None:
            detail = f" ({log.problems[0]})" if log.problems else ""
            raise LogFormatError(f"{path} holds no gradprobe event{detail}")
        summary.logs.append(log)
        for finding in engine.findings():
            per_key.setdefault((finding.code, finding.layer), []).append((finding, log.rank))
    _refuse_unrelated(summary.logs)
    merged = []
    for found in per_key.values():
        finding = max((f for f, _ in found), key=lambda f: (severity_rank(f.severity), -(f.step or 0)))
        ranks = sorted({rank for _, rank in found if rank is not None})
        if ranks:
            finding = finding._replace(evidence={**finding.evidence, "ranks": ranks})
        merged.append(finding)
    summary.findings = sort_findings(merged)
    return summary


def _refuse_unrelated(logs: list[LogSummary]) -> None:
    """Several logs read as one run must be distinct ranks of one distributed run."""
    if len(logs) < 2:
        return
    ranks = [log.rank for log in logs]
    worlds = {repr(log.world_size) for log in logs}
    if any(not isinstance(rank, int) for rank in ranks) or len(set(ranks)) < len(ranks) or len(worlds) > 1:
        shown = ", ".join(f"{Path(log.path).name} (rank {log.rank}, world size {log.world_size})" for log in logs)
        raise LogFormatError(
            f"these logs are not the ranks of one distributed run: {shown}; report each run on its own, "
            "or set them side by side with --compare"
        )


def _engine_for(config: Config | Mapping[str, Any] | None, first: dict[str, Any], log: LogSummary) -> RuleEngine:
    """Rules configured as the caller says, else as the run recorded in its meta event, else by pyproject.toml."""
    if config is not None:
        return RuleEngine(config)
    recorded = first.get("config") if first.get("kind") == "meta" else None
    if isinstance(recorded, Mapping):
        try:
            return RuleEngine(from_mapping(recorded, source="the run's recorded configuration"))
        except ConfigError as exc:  # e.g. a threshold of a plugin rule not installed here
            log.problems.append(LogProblem(1, f"{exc}; judged with pyproject.toml instead"))
    return RuleEngine(load_pyproject())
