"""GP503 unit-decay: decays pinned at |a| = 1 (or above) in a linear recurrence, where its sensitivity explodes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradprobe.actions import action
from gradprobe.events import finite_number
from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl, observes
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

RULE = Rule(
    code="GP503",
    name="unit-decay",
    severity="warning",
    raises=("warning", "error"),
    summary="A linear recurrence's slowest decay at |a| = 1 (or above): no forgetting, exploding sensitivity",
    thresholds={"max_decay": 0.9999},
    what_it_does=(
        "Reads the slowest channel's decay per step (the geometric mean of |a_t|) of each diagonal linear "
        "recurrence on deep steps. Above 1 the state grows without bound: error. At or above max_decay (pinned at "
        "1: a memory of 1/(1 - max_decay) steps or more) it is a warning whatever the task, like a recurrence "
        "with no memory at all (GP201): the parameterization cannot move the decay back. The evidence carries "
        "the sensitivity sqrt(1 + r^2)/(1 - r^2)^1.5 and the sequence length."
    ),
    why_bad=(
        "As |lambda| -> 1 the state's sensitivity to lambda grows as (1 - |lambda|^2)^(-3/2), faster than the state "
        "itself (Zucchet & Orvieto 2024): the gradients on the recurrence parameters blow up; at exactly 1 an "
        "exp(-exp(nu)) parameterization has a zero gradient and can never move away, and the input normalization "
        "sqrt(1 - |lambda|^2) shuts the channel's input off."
    ),
    example="lru.set_ring(1.0)   # every eigenvalue on the unit circle",
    use_instead="gradprobe.fixes.reinit.lru_ring_(lru, r_min=0.9, r_max=0.999)",
    fix_safety="The ring re-initialization is unsafe: only gradprobe.fixes.apply runs it; clipping is safe.",
    references="Orvieto et al. 2023; Zucchet & Orvieto 2024 (Recurrent neural networks: vanishing and exploding "
    "gradients are not the end of the story).",
)


@dataclass
class LayerDecay:
    kind: str = ""
    step: int | None = None
    top: float = 0.0
    seq_len: int = 0
    sensitivity: float | None = None
    over_since: int | None = None


@dataclass
class State:
    layers: dict[str, LayerDecay] = field(default_factory=dict)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
@observes("recurrence", having="layer")
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    top = finite_number(event.get("top_decay"))
    if top is None or event.get("layer") is None:
        return None
    entry = context.state("GP503", State).layers.setdefault(str(event["layer"]), LayerDecay())
    entry.kind, entry.step, entry.top = str(event.get("recurrence") or ""), event.get("step"), top
    entry.seq_len = int(event.get("seq_len") or 0)
    entry.sensitivity = finite_number(event.get("sensitivity"))
    over = top >= context.threshold("GP503", "max_decay")
    entry.over_since = (entry.step if entry.over_since is None else entry.over_since) if over else None
    return None


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    found = []
    limit = context.threshold("GP503", "max_decay")
    for name, entry in context.state("GP503", State).layers.items():
        if entry.top < limit:
            continue
        if entry.top > 1.0 + 1e-6:
            severity, what = "error", f"above 1 ({entry.top:.6g}): the state grows as {entry.top:.6g}^t"
        else:
            severity, what = "warning", f"pinned at {entry.top:.6g} (>= {limit:g}) on {entry.seq_len}-step sequences"
        sensitivity = "inf" if entry.sensitivity is None else f"{entry.sensitivity:.3g}"
        found.append(
            context.finding(
                "GP503",
                f"the slowest decay of {name} ({entry.kind or 'linear recurrence'}) is {what}; sensitivity of the "
                f"state to the decay {sensitivity} (it grows as (1 - |a|^2)^-1.5)",
                layer=name,
                step=entry.step,
                severity=severity,
                evidence={
                    "top_decay": entry.top,
                    "max_decay": limit,
                    "seq_len": entry.seq_len,
                    "sensitivity": entry.sensitivity,
                    "recurrence": entry.kind,
                },
                fixes=_fixes(entry.kind),
                first_step=entry.over_since,
            )
        )
    return found


def _fixes(kind: str) -> tuple[Any, ...]:
    first = action("lru-ring-init", r_min=0.9, r_max=0.999) if kind == "lru" else action("bounded-decay")
    return (first, action("clip-grad-norm-auto"))
