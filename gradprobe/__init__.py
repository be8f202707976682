"""gradprobe: gradient-health diagnostics and linting for recurrent neural networks.

Public API::

    findings = gradprobe.lint(model)
    report = gradprobe.check(model, inputs, loss_fn=None)
    gradprobe.assert_healthy(model, inputs, dependency_length=50)  # raises AssertionError, listing the findings
    with gradprobe.attach(model, log="run.log", every=50, fix="off") as probe:
        ...
        probe.step(loss)

The names are imported on first use (PEP 562), so ``import gradprobe`` and the
pytest plugin do not import torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gradprobe.version import __version__

_PUBLIC = {
    "Finding": "gradprobe.findings",
    "GradprobeWarning": "gradprobe.faults",
    "LayerProfile": "gradprobe.probe",
    "NotRecurrentError": "gradprobe.errors",
    "Probe": "gradprobe.probe",
    "Report": "gradprobe.api",
    "assert_healthy": "gradprobe.testing",
    "attach": "gradprobe.api",
    "check": "gradprobe.api",
    "lint": "gradprobe.api",
}

__all__ = [
    "Finding",
    "GradprobeWarning",
    "LayerProfile",
    "NotRecurrentError",
    "Probe",
    "Report",
    "__version__",
    "assert_healthy",
    "attach",
    "check",
    "lint",
]

if TYPE_CHECKING:
    from gradprobe.api import Report, attach, check, lint
    from gradprobe.errors import NotRecurrentError
    from gradprobe.faults import GradprobeWarning
    from gradprobe.findings import Finding
    from gradprobe.probe import LayerProfile, Probe
    from gradprobe.testing import assert_healthy


#: Subpackages reachable as attributes after ``import gradprobe`` (``gradprobe.fixes.apply``), imported on first use.
_SUBPACKAGES = frozenset({"fixes", "reference", "testing"})


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"gradprobe.{name}")
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'gradprobe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC, *_SUBPACKAGES])
