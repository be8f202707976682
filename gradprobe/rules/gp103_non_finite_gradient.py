"""GP103 non-finite-gradient: Inf/NaN in a recurrent output, the loss or a gradient, and where first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradprobe.actions import action
from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl, observes
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

RULE = Rule(
    code="GP103",
    name="non-finite-gradient",
    severity="error",
    summary="Inf/NaN in activations, loss or gradients",
    what_it_does="Reports the first step where a recurrent output, the loss or a parameter gradient is Inf or NaN, and where it appeared first.",
    why_bad="One non-finite update poisons every weight it touches; training cannot recover.",
    example="loss = crit(model(x)[0], y)   # x holds a NaN, or activations overflow",
    use_instead="gradprobe.attach(model, fix='auto')     # skips non-finite updates\n# or gradprobe.fixes.NonFiniteGuard('random', step_size=1e-2)",
    fix_safety="Skipping a non-finite update is safe (fix='auto').",
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
@observes("step", having="nonfinite")
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    if event.get("kind") != "step":
        return None
    bad = event.get("nonfinite")
    if not isinstance(bad, dict):
        return None
    where = bad.get("where")
    place = {
        "forward": f"in the output of {bad.get('layer')}",
        "loss": "in the loss",
        "gradient": f"in the gradient of {bad.get('parameter')}",
    }.get(str(where), "")
    count = bad.get("count", 0)
    return [
        context.finding(
            "GP103",
            f"non-finite values first {place} at step {event.get('step')} ({count} parameter gradients affected)",
            layer=bad.get("layer") or _owner(bad.get("parameter")),
            step=event.get("step"),
            evidence={"where": where, "parameter": bad.get("parameter"), "count": count},
            fixes=(action("skip-nonfinite"), action("check-inputs"), action("lower-learning-rate", factor=10)),
        )
    ]


def _owner(parameter: Any) -> str | None:
    if not isinstance(parameter, str) or not parameter:
        return None
    owner, _, _ = parameter.rpartition(".")
    return owner or None
