"""What the running test considers healthy: set by the pytest plugin, read by :mod:`gradprobe.testing`.

Kept apart from :mod:`gradprobe.testing` so that the pytest plugin can set it
without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class HealthSettings:
    """What a test considers healthy (set per test by the ``gradprobe`` marker and the plugin's options).

    Attributes:
        thresholds: Per-rule thresholds, merged under the call's own.
        ignore: Rule codes never reported.
        fail_on: Lowest failing severity; ``None`` leaves it to the rule
            configuration (``fail-on`` of ``[tool.gradprobe]``, default ``warning``).
        dependency_length: The dependency length (steps) the test declares.
    """

    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    fail_on: str | None = None
    dependency_length: int | None = None


#: Settings of the running test (the pytest plugin sets them from the marker).
current_settings: HealthSettings | None = None
#: Called with each checked report when the pytest plugin collects a session report.
collector: Callable[[Any], None] | None = None
