"""Rule thresholds and suppressions, from keyword arguments or ``[tool.gradprobe]``.

Example ``pyproject.toml``::

    [tool.gradprobe]
    ignore = ["GP203"]             # rule codes never reported
    fail-on = "warning"            # lowest failing severity: report/lint exit codes, pytest, Report.healthy
    dependency-length = 100        # steps the task needs gradients to carry (GP101)

    [tool.gradprobe.thresholds]
    GP101.min_horizon_fraction = 0.5
    GP301.max_fraction = 0.4

    [tool.gradprobe.signals]       # the run's shared signals, which several rules read
    loss_rise = 0.5                # a loss this far (relative) above its best level is diverging
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gradprobe.findings import DEFAULT_FAIL_ON, SEVERITIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A threshold or suppression that does not exist or has the wrong type."""


#: The run's shared signals and their defaults: read by several rules, so no one rule owns them
#: (see :class:`gradprobe.rules.observations.Observations`).
SIGNALS: dict[str, float] = {
    # a loss this far (relative) above its best level is diverging (GP101, GP102, GP401, GP403)
    "loss_rise": 0.25,
    # a gradient norm over spike_factor x the median of the last spike_window steps is a spike, judged after
    # min_history steps (GP102, GP401)
    "spike_factor": 10.0,
    "spike_window": 50,
    "min_history": 10,
    # spikes are harmful when one is over extreme_factor x the median, or min_spikes repeat with no loss recorded
    "extreme_factor": 1000.0,
    "min_spikes": 3,
    # a gradient norm pinned at the same maximum in this share of the steps is clipping in place (GP102, GP401)
    "min_pinned_fraction": 0.05,
}

#: Rule thresholds that became shared signals, accepted with a :class:`DeprecationWarning`.
MOVED_TO_SIGNALS: dict[tuple[str, str], str] = {
    ("GP403", "rise"): "loss_rise",
    ("GP102", "spike_factor"): "spike_factor",
    ("GP102", "spike_window"): "spike_window",
    ("GP102", "min_history"): "min_history",
    ("GP102", "extreme_factor"): "extreme_factor",
    ("GP102", "min_spikes"): "min_spikes",
    ("GP401", "min_pinned_fraction"): "min_pinned_fraction",
}


def split_signals(
    thresholds: Mapping[str, Mapping[str, float]] | None,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """``(rule thresholds, signals)``: the thresholds with those that became shared signals moved out (each
    with a :class:`DeprecationWarning` naming its new place)."""
    rules: dict[str, dict[str, float]] = {}
    signals: dict[str, float] = {}
    for code, values in (thresholds or {}).items():
        for key, value in values.items():
            signal = MOVED_TO_SIGNALS.get((str(code), str(key)))
            if signal is None:
                rules.setdefault(str(code), {})[str(key)] = value
                continue
            warnings.warn(
                f"gradprobe threshold {code}.{key} is deprecated, use signals.{signal} "
                f"([tool.gradprobe.signals] or signals={{'{signal}': ...}}): several rules read it",
                DeprecationWarning,
                stacklevel=4,
            )
            signals[signal] = value
    return rules, signals


def check_signals(signals: Mapping[str, Any], source: str = "signals") -> dict[str, float]:
    """The signals as floats; unknown names and non-numbers raise :class:`ConfigError`."""
    out: dict[str, float] = {}
    for key, value in signals.items():
        if key not in SIGNALS:
            raise ConfigError(f"{source}: unknown signal {key!r} (known: {', '.join(SIGNALS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: signals.{key} must be a number, got {value!r}")
        out[str(key)] = float(value)
    return out


@dataclass
class Config:
    """Thresholds per rule code and the set of suppressed codes.

    Attributes:
        thresholds: ``{"GP101": {"min_horizon_fraction": 0.5}}``; rules fall
            back to their registered defaults.
        ignore: Codes that are never reported.
        fail_on: The lowest failing severity (:data:`~gradprobe.findings.DEFAULT_FAIL_ON`
            unless set): ``Report.healthy``, ``assert_healthy``, the pytest plugin
            and the CLI exit codes all use it.
        dependency_length: The dependency length (steps) the task needs, when
            declared; GP101 judges the gradient horizon against it.
        signals: The shared signals set (:data:`SIGNALS` names them, with their defaults).
    """

    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    ignore: set[str] = field(default_factory=set)
    fail_on: str = DEFAULT_FAIL_ON
    dependency_length: int | None = None
    signals: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``[tool.gradprobe]``-shaped mapping (recorded in a run log's meta event)."""
        out: dict[str, Any] = {"thresholds": self.thresholds, "ignore": sorted(self.ignore), "fail-on": self.fail_on}
        if self.dependency_length is not None:
            out["dependency-length"] = self.dependency_length
        if self.signals:
            out["signals"] = dict(self.signals)
        return out

    def signal(self, name: str) -> float:
        """A shared signal's value: set here, else its default."""
        return float(self.signals.get(name, SIGNALS[name]))

    def merged(
        self,
        thresholds: Mapping[str, Mapping[str, float]] | None = None,
        ignore: Iterable[str] = (),
        signals: Mapping[str, float] | None = None,
    ) -> Config:
        """A copy with more thresholds, suppressions and signals layered on top."""
        rules, moved = split_signals(thresholds)
        merged = {code: dict(values) for code, values in self.thresholds.items()}
        for code, values in rules.items():
            merged.setdefault(code, {}).update(values)
        signal_values = {**self.signals, **moved, **check_signals(signals or {})}
        return Config(merged, set(self.ignore) | set(ignore), self.fail_on, self.dependency_length, signal_values)


def load_pyproject(start: str | os.PathLike[str] | None = None) -> Config:
    """Read ``[tool.gradprobe]`` from the nearest pyproject.toml at or above ``start`` (cwd)."""
    folder = Path(start or os.getcwd()).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / "pyproject.toml"
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{path}: {exc}") from None
            return from_mapping(data.get("tool", {}).get("gradprobe", {}), source=str(path))
    return Config()


def from_mapping(data: Mapping[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config` from a ``[tool.gradprobe]``-shaped mapping."""
    known = {"ignore", "thresholds", "fail-on", "fail_on", "dependency-length", "dependency_length", "signals"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{source}: unknown gradprobe setting(s): {', '.join(sorted(unknown))}")
    thresholds: dict[str, dict[str, float]] = {}
    raw_thresholds = data.get("thresholds", {})
    if not isinstance(raw_thresholds, Mapping):
        raise ConfigError(f"{source}: thresholds must be a table of rule codes")
    for code, values in raw_thresholds.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: thresholds.{code} must be a table of numbers")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{source}: thresholds.{code}.{key} must be a number, got {value!r}")
        thresholds[str(code)] = {str(k): float(v) for k, v in values.items()}
    thresholds, moved = split_signals(thresholds)
    raw_signals = data.get("signals", {})
    if not isinstance(raw_signals, Mapping):
        raise ConfigError(f"{source}: signals must be a table of numbers")
    signals = {**moved, **check_signals(raw_signals, source)}
    ignore = data.get("ignore", [])
    if not isinstance(ignore, (list, tuple, set, frozenset)) or not all(isinstance(c, str) for c in ignore):
        raise ConfigError(f"{source}: ignore must be a list of rule codes")
    fail_on = data.get("fail-on", data.get("fail_on", DEFAULT_FAIL_ON))
    if not isinstance(fail_on, str) or fail_on not in SEVERITIES:
        raise ConfigError(f"{source}: fail-on must be info, warning or error")
    need = data.get("dependency-length", data.get("dependency_length"))
    if need is not None and (isinstance(need, bool) or not isinstance(need, int) or need < 1):
        raise ConfigError(f"{source}: dependency-length must be a positive integer (steps), got {need!r}")
    return Config(thresholds, set(ignore), fail_on, need, signals)


def resolve(config: Config | Mapping[str, Any] | None) -> Config:
    """Accept a :class:`Config`, a mapping, or ``None`` (read pyproject.toml)."""
    if config is None:
        return load_pyproject()
    if isinstance(config, Config):
        return config
    return from_mapping(config)


#: Keywords renamed since 0.1, accepted with a :class:`DeprecationWarning`: old name -> new name.
RENAMED = {"seq_len": "dependency_length", "horizon": "dependency_length"}


def renamed(new_value: Any, old_value: Any, old: str, stacklevel: int = 3) -> Any:
    """``new_value``, else the value passed under the old keyword ``old`` (which warns that it is deprecated)."""
    if old_value is None:
        return new_value
    new = RENAMED[old]
    warnings.warn(f"gradprobe keyword {old}= is deprecated, use {new}=", DeprecationWarning, stacklevel=stacklevel)
    return new_value if new_value is not None else old_value


@dataclass(frozen=True)
class Options:
    """The rule keywords and declared needs that :func:`gradprobe.lint`, :func:`gradprobe.check`,
    :func:`gradprobe.attach`, the Lightning and Hugging Face callbacks and the pytest marker and fixture all take.

    Pass one as ``options=`` or its fields as keywords (keywords given win).

    Attributes:
        config: A :class:`Config`, a ``[tool.gradprobe]``-shaped mapping, or ``None`` to read pyproject.toml.
        thresholds: Per-rule thresholds layered over the configuration's, ``{"GP101": {"min_horizon_fraction": 0.5}}``.
        ignore: Rule codes never reported, added to the configuration's.
        fail_on: The lowest failing severity (default: the configuration's ``fail-on``).
        cells: Custom cell modules (or their qualified names) to probe.
        dependency_length: The dependency length (steps) the task needs (GP101).
        truncation: The truncated-BPTT window the loop uses (GP402).
        grad_clip: The norm the loop clips gradients at (GP401/GP102).
        signals: The run's shared signals several rules read (:data:`SIGNALS`), layered over the configuration's.
    """

    config: Config | Mapping[str, Any] | None = None
    thresholds: Mapping[str, Mapping[str, float]] | None = None
    ignore: tuple[str, ...] = ()
    fail_on: str | None = None
    cells: tuple[Any, ...] = ()
    dependency_length: int | None = None
    truncation: int | None = None
    grad_clip: float | None = None
    signals: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.fail_on is not None and self.fail_on not in SEVERITIES:
            raise ConfigError(f"fail_on must be info, warning or error, got {self.fail_on!r}")
        if isinstance(self.ignore, str):
            raise ConfigError("ignore must be a list of rule codes, not one string")

    @classmethod
    def of(cls, options: Options | None = None, **given: Any) -> Options:
        """``options`` (or the defaults) with the keywords in ``given`` that are set (not ``None``/empty) on top."""
        base = options if options is not None else cls()
        changes: dict[str, Any] = {}
        for name, value in given.items():
            if value is None or (name in ("ignore", "cells") and not value):
                continue
            changes[name] = tuple(value) if name in ("ignore", "cells") else value
        return replace(base, **changes) if changes else base

    def rule_config(self) -> Config:
        """The rule configuration: ``config`` (or pyproject.toml) with the thresholds, suppressions, failing
        severity and declared dependency length given here on top."""
        merged = resolve(self.config).merged(self.thresholds, self.ignore, self.signals)
        if self.fail_on is not None:
            merged.fail_on = self.fail_on
        if self.dependency_length is not None:
            merged.dependency_length = self.dependency_length
        return merged
