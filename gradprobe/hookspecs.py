"""Hook specifications: the whole extension surface of gradprobe.

Built-in rules and first-party plugins are written exactly like third-party
plugins: a module (or object) with functions named after these hooks, marked
with :data:`hookimpl`, registered through the ``gradprobe`` entry-point group::

    [project.entry-points.gradprobe]
    myrules = "my_package.gradprobe_rules"

Every hook name starts with ``gradprobe_`` so it can never collide with
``pytest_*`` hooks inside the pytest plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from gradprobe.findings import RuleResult
    from gradprobe.rules.context import RuleContext
    from gradprobe.rules.registry import Rule

PROJECT = "gradprobe"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -------------------------------------------------------------------------
# Registration
# -------------------------------------------------------------------------


@hookspec
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    """Declare the rules a plugin provides.

    Called once per :class:`~gradprobe.rules.registry.Registry`. Each rule
    has a unique code (``GP1xx`` gradient flow, ``GP2xx`` initialization,
    ``GP3xx`` activations, ``GP4xx`` training setup; third parties use their
    own prefix), a name, a default severity, its thresholds with defaults,
    and documentation.

    :param register: Call it with each :class:`~gradprobe.rules.registry.Rule`.
    """


# -------------------------------------------------------------------------
# Static checks (no data)
# -------------------------------------------------------------------------


@hookspec
def gradprobe_lint(model: nn.Module, context: RuleContext) -> RuleResult:
    """Inspect a model's parameters without running it (``gradprobe.lint``).

    :param model: The model; its recurrent layers are in ``context.sites``.
    :param context: Thresholds, suppression and the finding factory
        :meth:`~gradprobe.rules.context.RuleContext.finding`.
    :return: Findings, or ``None``.
    """


# -------------------------------------------------------------------------
# Checks over the recorded events
# -------------------------------------------------------------------------


@hookspec
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    """See one run-log event as it is recorded (or read back from a log).

    Events arrive in log order; keep running statistics in
    ``context.state(code)`` rather than keeping events, so that a long run
    costs constant memory.

    :param event: The event dict (``kind`` plus the fields documented in
        :mod:`gradprobe.events`).
    :param context: Thresholds, per-rule state and the finding factory.
    :return: Findings triggered by this event, or ``None``.
    """


@hookspec
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    """Judge what was observed so far (end of a run, or whenever findings are read).

    May be called more than once, so it must not change the rule state.

    :param context: Thresholds, per-rule state and the finding factory.
    :return: Findings, or ``None``.
    """


# -------------------------------------------------------------------------
# Event sinks
# -------------------------------------------------------------------------


@hookspec
def gradprobe_event_written(event: dict[str, Any]) -> None:
    """Receive every event the probe records (a TensorBoard or W&B sink, say).

    :param event: The event dict; do not modify it.
    """
