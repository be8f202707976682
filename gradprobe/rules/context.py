"""What a rule sees: thresholds, suppressions, the run's observations, its own state, the finding factory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gradprobe.actions import render
from gradprobe.config import Config, ConfigError
from gradprobe.findings import Finding, FixAction
from gradprobe.rules.observations import Observations, Signals
from gradprobe.rules.registry import Registry

S = TypeVar("S")


class RuleContext:
    """Passed to every rule hook.

    Attributes:
        config: Thresholds, suppressions and declared needs in force.
        registry: All registered rules.
        sites: For static checks, the model's recurrent sites.
        run: The run's :class:`~gradprobe.rules.observations.Observations`
            (the meta event, loss trend, gradient norms, clipping, deep-probe
            history, the shared signals' thresholds), updated by the engine
            before the rules see each event. Read-only for rules.
    """

    def __init__(self, config: Config, registry: Registry, sites: list[Any] | None = None) -> None:
        self.config = config
        self.registry = registry
        self.sites: list[Any] = list(sites or [])
        self.run = Observations(Signals.of(config))
        self._states: dict[str, Any] = {}

    @property
    def meta(self) -> dict[str, Any]:
        """The run log's ``meta`` event (layers, settings) once seen."""
        return self.run.meta

    def state(self, code: str, factory: Callable[[], S] = dict) -> S:  # type: ignore[assignment]
        """The rule's own state for this run, created by ``factory`` on first use.

        Each rule keeps its state under its own code; a typed dataclass
        factory is preferred over a dict.
        """
        if code not in self._states:
            self._states[code] = factory()
        state: S = self._states[code]
        return state

    def threshold(self, code: str, key: str) -> float:
        """The configured value of a rule's own threshold, or its registered default.

        Each rule reads only its own thresholds; what several rules read is a
        shared signal (``context.run.signals``).
        """
        rule = self.registry.rules.get(code)
        if rule is None:
            raise ConfigError(f"no rule {code} is registered")
        if key not in rule.thresholds:
            raise ConfigError(f"{code} has no threshold {key!r}")
        return float(self.config.thresholds.get(code, {}).get(key, rule.thresholds[key]))

    def enabled(self, code: str) -> bool:
        return code not in self.config.ignore

    @property
    def settings(self) -> dict[str, Any]:
        """The probe settings recorded in the ``meta`` event (``fix``, ``every``, declared needs)."""
        settings = self.meta.get("settings")
        return settings if isinstance(settings, dict) else {}

    @property
    def truncation(self) -> int | None:
        """The loop's truncated-BPTT window: declared (``attach(truncation=)``), else detected (``loop`` events)."""
        declared = self.settings.get("truncation")
        return int(declared) if declared else self.run.detected_truncation

    def finding(
        self,
        code: str,
        message: str,
        *,
        layer: str | None = None,
        step: int | None = None,
        evidence: dict[str, Any] | None = None,
        fixes: Sequence[FixAction] = (),
        fix: str | None = None,
        severity: str | None = None,
        first_step: int | None = None,
    ) -> Finding | None:
        """Build a finding of rule ``code`` (``None`` when the code is suppressed).

        Args:
            fixes: The remedies as data; the ``fix`` text is rendered from them.
            fix: Free text for plugins that have no registered action (used
                only when ``fixes`` is empty).
            first_step: Since when the problem shows (the first measurement of the unbroken stretch that shows
                it), when the rule knows it; the engine widens it over every occurrence.
        """
        if not self.enabled(code):
            return None
        rule = self.registry[code]
        text = render(tuple(fixes)) or fix
        return Finding(
            code,
            rule.name,
            severity or rule.severity,
            layer,
            step,
            message,
            dict(evidence or {}),
            text,
            tuple(fixes),
            first_step=first_step,
        )

    def is_linear_recurrence(self, module: str) -> bool:
        """Whether the run's ``meta`` describes ``module`` as a diagonal linear recurrence an adapter reads
        (the GP5xx rules judge it; the classic gradient-flow rules leave it to them)."""
        return bool(self.layer_info(module).get("recurrence"))

    def layer_info(self, module: str) -> dict[str, Any]:
        """The ``meta`` description of a recurrent module (empty when unknown)."""
        for layer in self.meta.get("layers") or []:
            if isinstance(layer, dict) and layer.get("name") == module:
                return layer
        return {}
