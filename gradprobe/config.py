"""Rule thresholds and suppressions, from keyword arguments or ``[tool.gradprobe]``.

Example ``pyproject.toml``::

    [tool.gradprobe]
    ignore = ["GP203"]             # rule codes never reported
    fail-on = "warning"            # lowest failing severity: report/lint exit codes, pytest, Report.healthy
    dependency-length = 100        # steps the task needs gradients to carry (GP101)

    [tool.gradprobe.thresholds]
    GP101.min_horizon_fraction = 0.5
    GP301.max_fraction = 0.4
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
    """

    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    ignore: set[str] = field(default_factory=set)
    fail_on: str = DEFAULT_FAIL_ON
    dependency_length: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``[tool.gradprobe]``-shaped mapping (recorded in a run log's meta event)."""
        out: dict[str, Any] = {"thresholds": self.thresholds, "ignore": sorted(self.ignore), "fail-on": self.fail_on}
        if self.dependency_length is not None:
            out["dependency-length"] = self.dependency_length
        return out

    def merged(self, thresholds: Mapping[str, Mapping[str, float]] | None = None, ignore: Iterable[str] = ()) -> Config:
        """A copy with more thresholds and suppressions layered on top."""
        merged = {code: dict(values) for code, values in self.thresholds.items()}
        for code, values in (thresholds or {}).items():
            merged.setdefault(code, {}).update(values)
        return Config(merged, set(self.ignore) | set(ignore), self.fail_on, self.dependency_length)


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
    known = {"ignore", "thresholds", "fail-on", "fail_on", "dependency-length", "dependency_length"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{source}: unknown gradprobe setting(s): {', '.join(sorted(unknown))}")
    thresholds: dict[str, dict[str, float]] = {}
    for code, values in dict(data.get("thresholds", {})).items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: thresholds.{code} must be a table of numbers")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{source}: thresholds.{code}.{key} must be a number, got {value!r}")
        thresholds[str(code)] = {str(k): float(v) for k, v in values.items()}
    ignore = data.get("ignore", [])
    if isinstance(ignore, str) or not all(isinstance(c, str) for c in ignore):
        raise ConfigError(f"{source}: ignore must be a list of rule codes")
    fail_on = data.get("fail-on", data.get("fail_on", DEFAULT_FAIL_ON))
    if fail_on not in SEVERITIES:
        raise ConfigError(f"{source}: fail-on must be info, warning or error")
    need = data.get("dependency-length", data.get("dependency_length"))
    if need is not None and (isinstance(need, bool) or not isinstance(need, int) or need < 1):
        raise ConfigError(f"{source}: dependency-length must be a positive integer (steps), got {need!r}")
    return Config(thresholds, set(ignore), fail_on, need)


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
    """

    config: Config | Mapping[str, Any] | None = None
    thresholds: Mapping[str, Mapping[str, float]] | None = None
    ignore: tuple[str, ...] = ()
    fail_on: str | None = None
    cells: tuple[Any, ...] = ()
    dependency_length: int | None = None
    truncation: int | None = None
    grad_clip: float | None = None

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
        merged = resolve(self.config).merged(self.thresholds, self.ignore)
        if self.fail_on is not None:
            merged.fail_on = self.fail_on
        if self.dependency_length is not None:
            merged.dependency_length = self.dependency_length
        return merged
