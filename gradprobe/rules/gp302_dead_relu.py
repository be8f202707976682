"""GP302 dead-relu: ReLU RNN units that never activate."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradprobe.actions import action
from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl, observes
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

RULE = Rule(
    code="GP302",
    name="dead-relu",
    severity="warning",
    raises=("warning", "error"),
    summary="ReLU RNN units that never activate",
    thresholds={"max_dead_fraction": 0.25, "max_zero_fraction": 0.9},
    what_it_does=(
        "Counts ReLU units that are zero on every sampled step and row (the fewest over the last 5 samples), and "
        "the overall share of zero activations."
    ),
    why_bad="A dead unit has zero slope everywhere: neither it nor its incoming weights ever learn again.",
    example="nn.init.constant_(rnn.bias_ih_l0, -1.0)   # pushes pre-activations below zero",
    use_instead=(
        "gradprobe.fixes.reinit.identity_recurrent_(rnn)   # IRNN: W_hh = I, zero bias\n"
        "gradprobe.fixes.reinit.positive_bias_(rnn, 0.1)    # pre-activations start above zero\n"
        "gradprobe.reference.RNN(n_in, n_hidden, nonlinearity='leaky_relu')   # nn.RNN has no leaky ReLU"
    ),
    known_problems="torch.nn.RNN has no leaky ReLU; gradprobe's reference RNN has one and takes nn.RNN's state_dict.",
    fix_safety="Re-initialization is unsafe: only gradprobe.fixes.apply runs it. Switching to a leaky ReLU is a code change.",
    references="Le, Jaitly, Hinton 2015 (IRNN).",
)


@dataclass
class LayerActivity:
    zero_sum: float = 0.0
    count: int = 0
    dead: deque[int] = field(default_factory=lambda: deque(maxlen=5))
    units: int = 0
    step: int | None = None
    over_since: int | None = None  # first sample of the unbroken stretch over a limit


@dataclass
class State:
    layers: dict[str, LayerActivity] = field(default_factory=dict)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
@observes("saturation")
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    if event.get("kind") != "saturation" or event.get("mode") != "RNN_RELU":
        return None
    layers, layer = context.state("GP302", State).layers, str(event["layer"])
    entry = layers.get(layer)
    if entry is None:
        entry = layers[layer] = LayerActivity()
    entry.count += 1
    entry.step = event.get("step")
    entry.units = int(event.get("units") or 0)
    zero = float((event.get("fractions") or {}).get("relu", 0.0))
    entry.zero_sum += zero
    dead = None
    if event.get("dead_units") is not None:
        dead = int(event["dead_units"])
        entry.dead.append(dead)
    over = zero > context.threshold("GP302", "max_zero_fraction") or (
        dead is not None and dead / max(entry.units, 1) > context.threshold("GP302", "max_dead_fraction")
    )
    entry.over_since = (entry.step if entry.over_since is None else entry.over_since) if over else None
    return None


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    found = []
    for layer, entry in context.state("GP302", State).layers.items():
        units = entry.units or 1
        dead = min(entry.dead) if entry.dead else 0
        zero = entry.zero_sum / max(entry.count, 1)
        dead_fraction = dead / units
        if dead_fraction <= context.threshold("GP302", "max_dead_fraction") and zero <= context.threshold(
            "GP302", "max_zero_fraction"
        ):
            continue
        finding = context.finding(
            "GP302",
            f"{dead} of {units} ReLU units never active and {zero:.0%} of activations zero in {layer}",
            layer=layer,
            step=entry.step,
            severity="error" if dead == units else "warning",
            evidence={"dead_units": dead, "units": units, "dead_fraction": dead_fraction, "zero_fraction": zero},
            fixes=(action("identity-recurrent"), action("positive-bias", value=0.1), action("leaky-relu-rnn")),
            first_step=entry.over_since,
        )
        found.append(finding)
    return found
