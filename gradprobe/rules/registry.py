"""The rule registry: every rule's code, name, defaults and documentation."""

from __future__ import annotations

from typing import Any, Protocol

from gradprobe.rule_spec import CATEGORIES, Rule

__all__ = ["CATEGORIES", "DuplicateRuleError", "Registry", "Rule", "RulePlugins"]


class RulePlugins(Protocol):
    """What the registry needs of a plugin manager (:class:`gradprobe.plugins.PluginManager`)."""

    @property
    def hook(self) -> Any:
        """The hook caller (``pm.hook``)."""
        ...

    def switch_off(self, name: str, where: str, exc: BaseException) -> None:
        """Switch a failing plugin off, with one warning."""
        ...


class DuplicateRuleError(ValueError):
    """Two plugins registered the same code."""


class Registry:
    """All rules the installed plugins declare, by code."""

    def __init__(self) -> None:
        self.rules: dict[str, Rule] = {}

    def register(self, rule: Rule) -> None:
        if rule.code in self.rules and self.rules[rule.code] != rule:
            raise DuplicateRuleError(f"rule code {rule.code} registered twice")
        self.rules[rule.code] = rule

    @classmethod
    def from_plugins(cls, pm: RulePlugins) -> Registry:
        """The rules of every plugin; a plugin that fails or claims a taken code is switched off whole."""
        registry = cls()
        for impl in pm.hook.gradprobe_register_rules.get_hookimpls():  # registration order: built-ins keep their codes
            declared: list[Rule] = []
            try:
                impl.function(declared.append)
                taken = [r.code for r in declared if r.code in registry.rules and registry.rules[r.code] != r]
                if taken:
                    raise DuplicateRuleError(f"rule code {taken[0]} is already registered by another plugin")
            except KeyboardInterrupt:  # the user's Ctrl-C goes on to the user
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit and GeneratorExit too: one plugin must not take the others down
                pm.switch_off(impl.plugin_name, "gradprobe_register_rules", exc)
                continue
            for rule in declared:
                registry.register(rule)
        return registry

    def __getitem__(self, code: str) -> Rule:
        return self.rules[code]

    def __contains__(self, code: object) -> bool:
        return code in self.rules

    def sorted(self) -> list[Rule]:
        return [self.rules[c] for c in sorted(self.rules)]
