"""The rule registry: every rule's code, name, defaults and documentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradprobe.plugins import PluginManager

CATEGORIES = {
    "GP0": "measurement",
    "GP1": "gradient flow",
    "GP2": "initialization",
    "GP3": "activations",
    "GP4": "training setup",
}


@dataclass(frozen=True)
class Rule:
    """A rule's identity and documentation, in the manner of ruff/flake8.

    Attributes:
        code: Unique code such as ``GP101``.
        name: Kebab-case name such as ``vanishing-gradient``.
        severity: Default severity of its findings.
        summary: One line for ``gradprobe rules``.
        thresholds: Tunable numbers with their defaults.
        what_it_does / why_bad / known_problems / example / use_instead /
            fix_safety / references: The rule's doc, in the manner of ruff's.
        static: Checked by ``gradprobe.lint`` (no data needed).
    """

    code: str
    name: str
    severity: str
    summary: str
    thresholds: dict[str, float] = field(default_factory=dict)
    what_it_does: str = ""
    why_bad: str = ""
    example: str = ""
    use_instead: str = ""
    static: bool = False
    known_problems: str = ""
    fix_safety: str = ""
    references: str = ""

    @property
    def category(self) -> str:
        return CATEGORIES.get(self.code[:3], "third-party")

    def doc(self) -> str:
        """The rule's documentation as Markdown."""
        options = "\n".join(f"- `{k}` (default {v:g})" for k, v in self.thresholds.items()) or "None."
        parts = [
            f"## {self.code} {self.name} (default severity {self.severity})",
            f"### What it does\n{self.what_it_does}",
            f"### Why is this bad?\n{self.why_bad}",
        ]
        if self.known_problems:
            parts.append(f"### Known problems\n{self.known_problems}")
        parts += [
            f"### Example\n```python\n{self.example}\n```",
            f"### Use instead\n```python\n{self.use_instead}\n```",
        ]
        if self.fix_safety:
            parts.append(f"### Fix safety\n{self.fix_safety}")
        parts.append(f"### Options\n{options}")
        if self.references:
            parts.append(f"### References\n{self.references}")
        return "\n\n".join(parts) + "\n"


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
    def from_plugins(cls, pm: PluginManager) -> Registry:
        """The rules of every plugin; a plugin that fails or claims a taken code is switched off whole."""
        registry = cls()
        for impl in pm.hook.gradprobe_register_rules.get_hookimpls():  # registration order: built-ins keep their codes
            declared: list[Rule] = []
            try:
                impl.function(declared.append)
                taken = [r.code for r in declared if r.code in registry.rules and registry.rules[r.code] != r]
                if taken:
                    raise DuplicateRuleError(f"rule code {taken[0]} is already registered by another plugin")
            except Exception as exc:  # noqa: BLE001 - one plugin must not take the others down
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


def builtin_rule(code: str) -> Rule:
    """The built-in rule with this code, whether or not its plugin is registered.

    Raises:
        KeyError: No built-in rule has this code.
    """
    import importlib

    from gradprobe.plugins import DEFAULT_PLUGINS

    for name in DEFAULT_PLUGINS:
        rule = getattr(importlib.import_module(name), "RULE", None)
        if isinstance(rule, Rule) and rule.code == code:
            return rule
    raise KeyError(code)
