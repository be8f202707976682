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
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from gradprobe.findings import RuleResult
    from gradprobe.recurrence_adapter import RecurrenceAdapter
    from gradprobe.rule_spec import Rule
    from gradprobe.rules.context import RuleContext

PROJECT = "gradprobe"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

_Function = TypeVar("_Function", bound=Callable[..., Any])

#: The attribute :func:`observes` sets on a ``gradprobe_observe`` implementation: ``(kinds, having)``.
OBSERVES_ATTRIBUTE = "gradprobe_observes"


def observes(*kinds: str, having: str | None = None) -> Callable[[_Function], _Function]:
    """Declare the events a ``gradprobe_observe`` implementation reads.

    The rule engine then calls it only for events of those kinds (and, with
    ``having``, only for those whose field ``having`` is present and not
    null). Most lines of a long run's log are ``step`` events; a rule that
    reads only ``deep`` events need not be called for each of them. An
    implementation without it sees every event::

        @hookimpl
        @observes("deep", "saturation")
        def gradprobe_observe(event, context): ...

        @hookimpl
        @observes("step", having="nonfinite")  # only the steps where Inf/NaN appeared
        def gradprobe_observe(event, context): ...

    :param kinds: Event kinds (``"step"``, ``"deep"``, ... see :mod:`gradprobe.events`).
    :param having: A field the event must carry, not null.
    """
    if not kinds or not all(isinstance(kind, str) for kind in kinds) or not isinstance(having, (str, type(None))):
        raise TypeError("observes() takes one or more event kinds as strings, and having= a field name")

    def mark(function: _Function) -> _Function:
        setattr(function, OBSERVES_ATTRIBUTE, (frozenset(kinds), having))
        return function

    return mark


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
    costs constant memory. Mark the implementation with :func:`observes` to
    be called only for the kinds it reads (a report then reads a long log
    faster); unmarked, it sees every event.

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


# -------------------------------------------------------------------------
# Layers
# -------------------------------------------------------------------------


@hookspec
def gradprobe_recurrence(module: nn.Module) -> RecurrenceAdapter | None:
    """Claim a module that is a diagonal linear recurrence ``h_t = a_t * h_(t-1) + b_t`` and say how to read it.

    Called for each module of a model at ``attach``, ``check`` and ``lint``
    (before gradprobe's own adapters, so a plugin may override them). The
    first adapter returned wins; the probe then computes the decays ``a_t``
    of the module's calls on deep steps and measures the layer exactly from
    them (:mod:`gradprobe.recorders.diagonal`).

    :param module: One module of the model.
    :return: A :class:`~gradprobe.recurrence_adapter.RecurrenceAdapter`, or ``None`` for a module it does not know.
    """
