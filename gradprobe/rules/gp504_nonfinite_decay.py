"""GP504 nonfinite-decay: non-finite decays (Inf/NaN Delta or gates) in a linear recurrence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradprobe.actions import action
from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl, observes
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

RULE = Rule(
    code="GP504",
    name="nonfinite-decay",
    severity="error",
    summary="Non-finite decays in a linear recurrence (Inf/NaN Delta, gates or eigenvalues)",
    what_it_does=(
        "Counts the non-finite decays a_t a diagonal linear recurrence's adapter computes on a deep step (written "
        "on steps with non-finite values too), and names the layer where they arose: GP103 says that a gradient "
        "turned non-finite, this rule says that the recurrence's own decays did."
    ),
    why_bad=(
        "A NaN decay turns the whole state NaN from that step on, and every gradient through it. In Mamba-2 a "
        "data-dependent Delta that grows without bound makes exp(Delta A) underflow and its gradient overflow "
        "(state-spaces/mamba issues 529 and 812)."
    ),
    example="mixer.A_log.data[0] = float('nan')",
    use_instead=(
        "clip the gradients (attach(..., fix='auto')), bound Delta (Mamba-2's time_step_limit), "
        "and check the inputs for NaN"
    ),
    fix_safety="Clipping and skipping non-finite updates are safe; bounding the decay is a change to your code.",
    references="state-spaces/mamba issues 529, 812 and PR 962.",
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
@observes("recurrence", having="nonfinite")
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    count = int(event.get("nonfinite") or 0)
    if count <= 0 or event.get("layer") is None:
        return None
    layer = str(event["layer"])
    kind = str(event.get("recurrence") or "linear recurrence")
    return [
        context.finding(
            "GP504",
            f"{count} non-finite decays in {layer} ({kind}) at step {event.get('step')}",
            layer=layer,
            step=event.get("step"),
            evidence={"nonfinite": count, "seq_len": event.get("seq_len"), "recurrence": kind},
            fixes=(action("clip-grad-norm-auto"), action("skip-nonfinite"), action("bounded-decay")),
            first_step=event.get("step"),
        )
    ]
