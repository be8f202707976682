"""Runs the rules over events (live from the probe, or read back from a log) and over models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from gradprobe.config import Config, ConfigError, resolve
from gradprobe.findings import NOT_MEASURED, Finding, severity_rank
from gradprobe.plugins import PluginManager, default_plugin_manager
from gradprobe.rules.context import RuleContext
from gradprobe.rules.registry import Registry

if TYPE_CHECKING:
    from torch import nn


class RuleEngine:
    """Feeds events to the ``gradprobe_observe`` hooks and gathers findings.

    A finding is kept once per ``(code, layer)``: the most severe one, the
    earliest among equals; ``evidence["occurrences"]`` counts repeats.

    Args:
        config: A :class:`~gradprobe.config.Config`, a ``[tool.gradprobe]``-shaped
            mapping, or ``None`` to read pyproject.toml.
        thresholds: Extra per-rule thresholds, ``{"GP101": {"min_horizon_fraction": 0.5}}``.
        ignore: Extra codes to suppress.
        plugin_manager: Defaults to the shared one (built-ins plus entry points).
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | None = None,
        thresholds: Mapping[str, Mapping[str, float]] | None = None,
        ignore: Iterable[str] = (),
        plugin_manager: PluginManager | None = None,
    ) -> None:
        self.pm = plugin_manager or default_plugin_manager()
        self.registry = Registry.from_plugins(self.pm)
        self.config = resolve(config).merged(thresholds, ignore)
        self._validate()
        self.context = RuleContext(self.config, self.registry)
        #: The sites linted at attach (named in the "not judged" findings when no meta event came).
        self._linted: list[Any] = []
        self._kept: dict[tuple[str, str | None], Finding] = {}
        self._counts: dict[tuple[str, str | None], int] = {}
        #: Per (code, layer), the first and last step a finding was seen at.
        self._spans: dict[tuple[str, str | None], tuple[int, int]] = {}

    def _validate(self) -> None:
        for code, values in self.config.thresholds.items():
            if code not in self.registry:
                raise ConfigError(f"unknown rule code {code!r} in thresholds")
            for key in values:
                if key not in self.registry[code].thresholds:
                    known = ", ".join(self.registry[code].thresholds) or "none"
                    raise ConfigError(f"{code} has no threshold {key!r} (known: {known})")
        for code in self.config.ignore:
            if code not in self.registry:
                raise ConfigError(f"unknown rule code {code!r} in ignore")

    def feed(self, event: dict[str, Any]) -> list[Finding]:
        """Show one event to every rule that reads its kind; return the findings that are new."""
        kind = event.get("kind")
        self.context.run.feed(event)
        if kind == "finding":
            # static findings were judged on the model at attach time and cannot be re-derived from events,
            # nor can a rule's failure on a layer at that time (GP001 naming the rule)
            code = str(event.get("code"))
            evidence = event.get("evidence")
            judged_at_attach = code == NOT_MEASURED and isinstance(evidence, dict) and "rules" in evidence
            if (
                code in self.registry
                and (self.registry[code].static or judged_at_attach)
                and self.context.enabled(code)
            ):
                finding = Finding.from_dict(event)
                if (finding.code, finding.layer) not in self._kept:  # written at attach and again at close
                    self._keep(finding)
                    return [finding]
            return []
        results = self.pm.observe(event, self.context)
        if not results:  # most events: no rule reads them, or none found anything
            return results
        fresh = []
        for result in results:
            for finding in result or ():
                if isinstance(finding, Finding) and self._keep(finding):
                    fresh.append(finding)
        return fresh

    def call_hook(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call a gradprobe hook of this engine's plugins, each isolated (a raising plugin is switched off alone)."""
        return self.pm.call(hook, **kwargs)

    def _keep(self, finding: Finding) -> bool:
        key = (finding.code, finding.layer)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._note_span(key, finding)
        old = self._kept.get(key)
        if old is None or severity_rank(finding.severity) > severity_rank(old.severity):
            self._kept[key] = finding
            return old is None
        return False

    def findings(self) -> list[Finding]:
        """Observed findings plus the current summaries, most severe first.

        A layer that a rule could not judge (the rule raised on it, or was
        switched off for the whole run) is reported not measured (GP001) with
        the rule and its error: a rule's failure never reads as healthy.
        """
        merged = dict(self._kept)
        for result in self.call_hook("gradprobe_summarize", context=self.context):
            for finding in result or ():
                if not isinstance(finding, Finding):
                    continue
                key = (finding.code, finding.layer)
                old = merged.get(key)
                if old is None or severity_rank(finding.severity) >= severity_rank(old.severity):
                    merged[key] = finding
        for finding in self._rule_faults():  # after the summaries: a summary that raised counts
            merged.setdefault((finding.code, finding.layer), finding)
        out = []
        for key, finding in merged.items():
            count = self._counts.get(key, 0)
            if count > 1:
                finding = finding._replace(evidence={**finding.evidence, "occurrences": count})
            out.append(self._spanned(key, finding))
        return sort_findings(out)

    def _note_span(self, key: tuple[str, str | None], finding: Finding) -> None:
        """Widen the steps ``key`` was seen over with one occurrence."""
        seen = [s for s in (finding.first_step, finding.step, finding.last_step) if s is not None]
        if not seen:
            return
        old = self._spans.get(key)
        low, high = min(seen), max(seen)
        self._spans[key] = (low, high) if old is None else (min(old[0], low), max(old[1], high))

    def _spanned(self, key: tuple[str, str | None], finding: Finding) -> Finding:
        """``finding`` with the first and last step it was seen at (measured findings only)."""
        if finding.step is None and finding.first_step is None:
            return finding  # static: the model as built
        seen = [s for s in (finding.first_step, finding.step, finding.last_step) if s is not None]
        span = self._spans.get(key)
        if span is not None:
            seen.extend(span)
        return finding._replace(first_step=min(seen), last_step=max(seen))

    def _rule_faults(self) -> list[Finding]:
        """GP001 for each layer a failed rule plugin covered (:attr:`PluginManager.layer_faults`, ``run_faults``)."""
        if NOT_MEASURED not in self.registry or not (self.pm.layer_faults or self.pm.run_faults):
            return []
        per_layer: dict[str, list[str]] = {}
        for (plugin, layer), reason in self.pm.layer_faults.items():
            per_layer.setdefault(layer, []).append(f"{plugin} ({reason})")
        attached = [
            str(layer.get("name")) for layer in self.context.meta.get("layers") or [] if isinstance(layer, dict)
        ]
        for layer in attached or [getattr(site, "name", str(site)) for site in self._linted]:
            for plugin, reason in self.pm.run_faults.items():
                per_layer.setdefault(layer, []).append(f"{plugin} ({reason})")
        found = []
        for layer, failed in per_layer.items():
            reason = "a rule failed on it and was switched off for it: " + "; ".join(failed)
            finding = self.context.finding(
                NOT_MEASURED,
                f"{layer} was not fully judged: {reason}",
                layer=layer,
                evidence={"reason": reason, "rules": [entry.split(" (")[0] for entry in failed]},
            )
            if finding is not None:
                found.append(finding)
        return found

    def finish(self) -> list[Finding]:
        """The final findings of a run."""
        return self.findings()

    def lint(self, model: nn.Module, sites: list[Any], keep: bool = False) -> list[Finding]:
        """Run the static rules on ``model``.

        Args:
            keep: Also keep the findings among this engine's (as the probe does at attach time).
        """
        found: list[Finding] = []
        for site in sites:  # one layer at a time: a rule that fails on one layer goes on for the others
            context = RuleContext(self.config, self.registry, sites=[site])
            for result in self.pm.call_for_layer("gradprobe_lint", site.name, model=model, context=context):
                found.extend(f for f in result or () if isinstance(f, Finding) and f not in found)
        self._linted = list(sites)
        found.extend(self._rule_faults())
        if keep:
            for finding in found:
                self._keep(finding)
        return sort_findings(found)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Most severe first, then by code and layer."""
    return sorted(findings, key=lambda f: (-severity_rank(f.severity), f.code, f.layer or "", f.step or 0))
