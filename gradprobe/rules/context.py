"""What a rule sees: thresholds, suppressions, per-rule state, and the finding factory."""

from __future__ import annotations

from typing import Any

from gradprobe.config import Config, ConfigError
from gradprobe.findings import Finding
from gradprobe.rules.registry import Registry


class RuleContext:
    """Passed to every rule hook.

    Attributes:
        config: Thresholds and suppressions in force.
        registry: All registered rules.
        meta: The run log's ``meta`` event (layers, settings) once seen.
        sites: For static checks, the model's recurrent sites.
    """

    def __init__(self, config: Config, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.meta: dict[str, Any] = {}
        self.sites: list[Any] = []
        self._states: dict[str, dict[str, Any]] = {}

    def state(self, code: str) -> dict[str, Any]:
        """Mutable per-rule storage that lives as long as the run.

        The namespace ``"signals"`` is shared: GP1xx rules record there what
        GP4xx rules weigh (``spikes``, ``max_spike_ratio``, ``growth`` by layer).
        """
        return self._states.setdefault(code, {})

    def threshold(self, code: str, key: str) -> float:
        """The configured value of a rule's threshold, or its registered default."""
        rule = self.registry[code]
        if key not in rule.thresholds:
            raise ConfigError(f"{code} has no threshold {key!r}")
        return float(self.config.thresholds.get(code, {}).get(key, rule.thresholds[key]))

    def enabled(self, code: str) -> bool:
        return code not in self.config.ignore

    def finding(
        self,
        code: str,
        message: str,
        *,
        layer: str | None = None,
        step: int | None = None,
        evidence: dict[str, Any] | None = None,
        fix: str | None = None,
        severity: str | None = None,
    ) -> Finding | None:
        """Build a finding of rule ``code`` (``None`` when the code is suppressed)."""
        if not self.enabled(code):
            return None
        rule = self.registry[code]
        return Finding(code, rule.name, severity or rule.severity, layer, step, message, dict(evidence or {}), fix)

    def layer_info(self, module: str) -> dict[str, Any]:
        """The ``meta`` description of a recurrent module (empty when unknown)."""
        for layer in self.meta.get("layers", []):
            if layer.get("name") == module:
                return layer
        return {}
