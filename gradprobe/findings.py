"""What rules report: :class:`Finding`, and severity ordering."""

from __future__ import annotations

from typing import Any, NamedTuple

SEVERITIES = ("info", "warning", "error")


def severity_rank(severity: str) -> int:
    """0 for info, 1 for warning, 2 for error."""
    return SEVERITIES.index(severity)


class Finding(NamedTuple):
    """One problem a rule found.

    Attributes:
        code: Rule code, e.g. ``"GP101"``.
        name: Rule name, e.g. ``"vanishing-gradient"``.
        severity: ``info``, ``warning`` or ``error``.
        layer: Qualified module name (or track, ``encoder.l1_reverse``), or ``None``.
        step: Training step where it was seen, ``None`` for static checks.
        message: One line with the measured numbers.
        evidence: The numbers behind the message.
        fix: A suggested remedy, or ``None``.
    """

    code: str
    name: str
    severity: str
    layer: str | None
    step: int | None
    message: str
    evidence: dict[str, Any]
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``finding`` event's fields)."""
        return self._asdict()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`; extra keys are ignored."""
        return cls(**{k: data.get(k) for k in cls._fields if k in data or k == "fix"})

    def __str__(self) -> str:
        where = f" {self.layer}" if self.layer else ""
        when = f" step {self.step}" if self.step is not None else ""
        return f"{self.code} {self.name} [{self.severity}]{where}{when}: {self.message}"
