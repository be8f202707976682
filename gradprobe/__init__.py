"""gradprobe: gradient-health diagnostics and linting for recurrent neural networks.

Public API::

    findings = gradprobe.lint(model)
    report = gradprobe.check(model, inputs, loss_fn=None)
    with gradprobe.attach(model, log="run.log", every=50, fix="off") as probe:
        ...
        probe.step(loss)
"""

from __future__ import annotations

__version__ = "0.1.0"

from gradprobe.api import Report, check, lint  # noqa: E402
from gradprobe.discovery import NotRecurrentError  # noqa: E402
from gradprobe.findings import Finding  # noqa: E402
from gradprobe.probe import GradprobeWarning, LayerProfile, Probe, attach  # noqa: E402

__all__ = [
    "Finding",
    "GradprobeWarning",
    "LayerProfile",
    "NotRecurrentError",
    "Probe",
    "Report",
    "__version__",
    "attach",
    "check",
    "lint",
]
