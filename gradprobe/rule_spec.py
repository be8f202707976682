"""A rule's identity and documentation (code, name, severity, thresholds, ruff-style docs): the vocabulary the
rule modules, the plugin hooks and ``gradprobe rules`` share."""

from __future__ import annotations

from dataclasses import dataclass, field

from gradprobe.config import SIGNALS

CATEGORIES = {
    "GP0": "measurement",
    "GP1": "gradient flow",
    "GP2": "initialization",
    "GP3": "activations",
    "GP4": "training setup",
    "GP5": "linear recurrences",
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
        signals: The run's shared signals it reads (``[tool.gradprobe.signals]``; owned by no one rule).
        raises: Every severity its findings can take, lowest first (default: ``severity`` alone).
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
    signals: tuple[str, ...] = ()
    raises: tuple[str, ...] = ()

    @property
    def severities(self) -> str:
        """The severities its findings take, as ``gradprobe rules`` shows them: ``warning`` or ``info-error``."""
        raised = self.raises or (self.severity,)
        return raised[0] if len(raised) == 1 else f"{raised[0]}-{raised[-1]}"

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
        if self.signals:
            shown = "\n".join(f"- `{name}` (default {SIGNALS[name]:g})" for name in self.signals)
            parts.append(f"### Shared signals it reads (`[tool.gradprobe.signals]`)\n{shown}")
        if self.references:
            parts.append(f"### References\n{self.references}")
        return "\n\n".join(parts) + "\n"
