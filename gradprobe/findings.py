"""What rules report: :class:`Finding` with its :class:`FixAction` data, and severity ordering.

Severities:

``info``
    A measurement worth knowing (a short gradient horizon, torch's default
    forget bias) with no evidence that it hurts this run.
``warning``
    Evidence that it hurts: a declared need that is not met, a symptom in
    training (stalled or diverging loss, spikes), the task's structure, or a
    trend over training.
``error``
    Training is broken or about to be (non-finite values, gradients growing
    through time), or two kinds of evidence agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, TypeAlias

SEVERITIES = ("info", "warning", "error")

#: What "healthy" means everywhere: no finding at or above this severity. It is the
#: default of ``Report.healthy``, ``assert_healthy``, ``gradprobe report``/``lint``
#: exit codes and the pytest plugin; ``fail-on`` in ``[tool.gradprobe]`` (or an
#: explicit option) changes it for all of them at once.
DEFAULT_FAIL_ON = "warning"


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error.

    Raises:
        ValueError: ``severity`` is not one of :data:`SEVERITIES`.
    """
    return SEVERITIES.index(severity)


def at_or_above(severity: str, fail_on: str) -> bool:
    """Whether ``severity`` reaches ``fail_on`` (the one definition of failing, for the CLI, pytest and reports)."""
    return severity_rank(severity) >= severity_rank(fail_on)


#: The code of a layer the probe could not measure, or whose measuring (or judging) failed.
NOT_MEASURED = "GP001"


def failing(findings: Iterable[Finding], fail_on: str = DEFAULT_FAIL_ON, allow: Iterable[str] = ()) -> list[Finding]:
    """The findings that make a run unhealthy: at or above ``fail_on``, or a layer not measured (GP001, whatever
    ``fail_on``: unknown health is never "ok"), and not in ``allow``."""
    allowed = set(allow)
    return [
        f for f in findings if f.code not in allowed and (f.code == NOT_MEASURED or at_or_above(f.severity, fail_on))
    ]


def verdict(findings: Iterable[Finding], fail_on: str = DEFAULT_FAIL_ON, allow: Iterable[str] = ()) -> str:
    """``"FAIL"`` (findings at or above ``fail_on``), ``"NOT MEASURED"`` (only layers not measured fail) or ``"ok"``."""
    failed = failing(findings, fail_on, allow)
    if not failed:
        return "ok"
    return "NOT MEASURED" if all(f.code == NOT_MEASURED for f in failed) else "FAIL"


class FixAction(NamedTuple):
    """One remedy as data (see :mod:`gradprobe.actions`).

    Attributes:
        action: Action id, e.g. ``"orthogonal-recurrent"``.
        params: Its parameters, e.g. ``{"max_timescale": 100}``.
        safety: ``safe`` (may run automatically), ``unsafe`` (explicit
            ``fixes.apply``) or ``display-only`` (a change to the user's code).
    """

    action: str
    params: dict[str, Any]
    safety: str

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "params": dict(self.params), "safety": self.safety}

    @classmethod
    def from_dict(cls, data: Any) -> FixAction | None:
        """Read one back from a log; ``None`` for anything malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("action"), str):
            return None
        params = data.get("params")
        return cls(
            data["action"], dict(params) if isinstance(params, dict) else {}, str(data.get("safety", "display-only"))
        )


class Finding(NamedTuple):
    """One problem (or measurement) a rule reports.

    Attributes:
        code: Rule code, e.g. ``"GP101"``.
        name: Rule name, e.g. ``"vanishing-gradient"``.
        severity: ``info``, ``warning`` or ``error``.
        layer: Qualified module name (or track, ``encoder.l1_reverse``), or ``None``.
        step: Training step where it was seen, ``None`` for static checks.
        message: One line with the measured numbers and the evidence it rests on.
        evidence: The numbers behind the message.
        fix: The remedies as text, rendered from ``fixes``.
        fixes: The remedies as data (:class:`FixAction`).
        first_step: The first training step it was seen at (a measured finding; ``None`` when unknown).
        last_step: The last training step it was seen at.
    """

    code: str
    name: str
    severity: str
    layer: str | None
    step: int | None
    message: str
    evidence: dict[str, Any]
    fix: str | None = None
    fixes: tuple[FixAction, ...] = ()
    first_step: int | None = None
    last_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``finding`` event's fields)."""
        data = self._asdict()
        data["fixes"] = [f.to_dict() for f in self.fixes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`; extra keys are ignored, and what a log left out or typed wrongly takes
        its neutral value (a static finding without a layer, an evidence that is not a mapping)."""

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        def integer(key: str) -> int | None:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        evidence = data.get("evidence")
        raw = data.get("fixes") or []
        return cls(
            code=str(data.get("code")),
            name=text("name") or str(data.get("code")),
            severity=str(data.get("severity")),
            layer=text("layer"),
            step=integer("step"),
            message=str(data.get("message", "")),
            evidence=dict(evidence) if isinstance(evidence, dict) else {},
            fix=text("fix"),
            fixes=tuple(
                f for f in (FixAction.from_dict(x) for x in (raw if isinstance(raw, list) else [])) if f is not None
            ),
            first_step=integer("first_step"),
            last_step=integer("last_step"),
        )

    @property
    def span(self) -> tuple[int, int] | None:
        """``(first step, last step)`` when it was seen over more than one step, else ``None``."""
        first, last = self.first_step, self.last_step
        return (first, last) if first is not None and last is not None and first != last else None

    def __str__(self) -> str:
        """One line with code, name, severity, layer, step and message, then ``fix: ...`` when there is one."""
        where = f" {self.layer}" if self.layer else ""
        when = f" step {self.step}" if self.step is not None else ""
        if self.span is not None:
            when = f" steps {self.span[0]}-{self.span[1]}"
        text = f"{self.code} {self.name} [{self.severity}]{where}{when}: {self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text


RuleResult: TypeAlias = "Iterable[Finding | None] | None"
"""What a rule hook returns: findings, ``None`` entries for suppressed ones (skipped), or ``None``."""
