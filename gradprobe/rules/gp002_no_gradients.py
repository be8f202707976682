"""GP002 no-gradients: steps were recorded, but no parameter ever had a gradient."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradprobe.events import number
from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl
from gradprobe.rules.context import RuleContext
from gradprobe.rules.registry import Rule

RULE = Rule(
    code="GP002",
    name="no-gradients",
    severity="warning",
    summary="Steps recorded without any gradient: nothing was measured",
    what_it_does=(
        "Counts the steps whose total gradient norm is zero (no parameter has a .grad, or every gradient is 0). "
        "When every recorded step is like that, no gradient rule could judge anything, and the run is reported "
        "as not measured instead of healthy."
    ),
    why_bad="A report that says 'ok' about gradients that never existed hides a broken loop or a frozen model.",
    known_problems="A run whose gradients are exactly zero for a real reason (a constant loss) is reported too.",
    example="loss = crit(model(x)[0], y)\nprobe.step(loss)        # before backward(): no gradient yet\nloss.backward()",
    use_instead="loss.backward()\nprobe.step(loss)        # after backward, before optimizer.step()",
    fix_safety="Display only: the fix is in your loop.",
)


@dataclass
class State:
    steps: int = 0
    without: int = 0


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    if event.get("kind") == "step":
        state = context.state("GP002", State)
        state.steps += 1
        if not number(event.get("grad_norm")):
            state.without += 1
    return None


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    state = context.state("GP002", State)
    if not state.steps or state.without < state.steps:
        return None
    return [
        context.finding(
            "GP002",
            f"no gradient in any of the {state.steps} recorded steps: call probe.step() after loss.backward(), "
            "and check that some parameters require grad",
            evidence={"steps": state.steps, "steps_without_gradient": state.without},
        )
    ]
