"""GP501 decay-collapse: the decays of a linear recurrence carry the gradient less far than the task needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradprobe.actions import action
from gradprobe.events import finite_number
from gradprobe.findings import Finding, FixAction, RuleResult
from gradprobe.hookspecs import hookimpl, observes
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext
from gradprobe.rules.evidence import VanishingEvidence, short_horizons

RULE = Rule(
    code="GP501",
    name="decay-collapse",
    severity="info",
    raises=("info", "warning", "error"),
    summary="The decays of a linear recurrence (LRU, minGRU, Mamba ...) forget faster than the task needs",
    what_it_does=(
        "For a diagonal linear recurrence h_t = a_t * h_(t-1) + b_t (an LRU, minGRU, RG-LRU or Mamba layer, read by "
        "its adapter), the gradient through time is the product of the decays |a_t|: the probe computes it exactly "
        "per channel, and the horizon of the slowest channel, at epsilon, is the layer's horizon. A short horizon "
        "alone is info; it becomes a warning with one kind of evidence that it hurts and an error with two, the same "
        "evidence as GP101 (and its thresholds, [tool.gradprobe.thresholds.GP101]): a declared dependency length "
        "above the horizon, a loss that reads only the last steps and is not learning, a stalled loss, or a horizon "
        "that collapsed during training (Mamba's data-dependent Delta growing until every decay is near 0). "
        "GP101 leaves these layers to this rule."
    ),
    why_bad=(
        "A channel with decay a keeps a^k of its gradient after k steps: when every channel's decay is small, no "
        "gradient reaches back further than a few steps and long dependencies cannot be learned. In selective "
        "state-space models a collapsing decay (Delta too large, A too negative) is also the prelude to the "
        "gradient-norm explosions and NaNs reported for Mamba-2."
    ),
    known_problems=(
        "The slowest channel sets the horizon: a layer where a few channels remember and most forget is judged by "
        "the few. The decays are read on the rows and steps of the deep step's batch."
    ),
    example="mixer.dt_proj.bias.data.fill_(20.0)   # Mamba: Delta = softplus(20) ~ 20, every exp(Delta A) ~ 0",
    use_instead=(
        "# Mamba: Delta log-uniform in [dt_min, dt_max] = [1e-3, 1e-1] through the inverse softplus of dt_bias\n"
        "lru = gradprobe.reference.LRU(d_in, n_state, r_min=0.9, r_max=0.999)"
    ),
    fix_safety=(
        "The LRU ring re-initialization is unsafe (it changes the weights): only gradprobe.fixes.apply runs it. "
        "The others are changes to your code."
    ),
    references=(
        "Orvieto et al. 2023 (LRU); Gu & Dao 2023 (Mamba); Dao & Gu 2024 (Mamba-2); state-spaces/mamba issues 529, 812."
    ),
)


@dataclass
class State:
    #: Per layer, the latest ``recurrence`` event's numbers.
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
@observes("recurrence", having="layer")
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    if event.get("layer") is not None:
        context.state("GP501", State).latest[str(event["layer"])] = dict(event)
    return None


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    return [_finding(context, evidence) for evidence in short_horizons(context, linear_recurrences=True)]


def _finding(context: RuleContext, e: VanishingEvidence) -> Finding | None:
    track = e.track
    info = context.layer_info(track.module)
    latest = context.state("GP501", State).latest.get(track.name, {})
    top = finite_number(latest.get("top_decay"))
    kind = str(info.get("recurrence") or latest.get("recurrence") or "linear recurrence")
    slowest = f"; slowest channel |a| = {top:.4g} per step" if top is not None else ""
    steps = f"{e.horizon:.0f} step" + ("" if round(e.horizon) == 1 else "s")
    head = f"the decays of {track.name} ({kind}) carry the gradient {steps} {e.compared()}{slowest}"
    return context.finding(
        "GP501",
        e.message(head, "declare dependency_length= to judge it"),
        layer=track.name,
        step=track.latest.step,
        severity=e.severity,
        evidence=e.numbers_for(top_decay=top, recurrence=kind),
        fixes=_fixes(kind, e.judged_length, track.epsilon, info) if e.hurts else (),
        first_step=e.first_step(),
    )


def _fixes(kind: str, length: int, epsilon: float, info: dict[str, Any]) -> tuple[FixAction, ...]:
    """A ring whose slowest channel keeps epsilon of the gradient over ``length`` steps (LRU), else the layer's
    documented range."""
    if kind == "lru":
        r_max = min(max(0.999, epsilon ** (1.0 / max(length, 1))), 0.99999)
        return (action("lru-ring-init", r_min=0.9, r_max=r_max),)
    documented = info.get("documented") or "the range the layer's paper documents"
    return (action("decay-init", documented=documented),)
