"""GP002 no-gradients: steps were recorded, but no parameter ever had a gradient."""

from __future__ import annotations

from collections.abc import Callable

from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

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


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    norms = context.run.norms  # counts the step events and those without a gradient
    if not norms.recorded or norms.without_gradient < norms.recorded:
        return None
    return [
        context.finding(
            "GP002",
            f"no gradient in any of the {norms.recorded} recorded steps: call probe.step() after loss.backward(), "
            "and check that some parameters require grad",
            evidence={"steps": norms.recorded, "steps_without_gradient": norms.without_gradient},
        )
    ]
