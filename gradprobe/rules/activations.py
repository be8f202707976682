"""GP3xx activations: saturated gates (GP301), dead ReLU units (GP302)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from gradprobe.findings import Finding
from gradprobe.hookspecs import hookimpl
from gradprobe.recorders.saturation import TANH_GATES
from gradprobe.rules.context import RuleContext
from gradprobe.rules.registry import Rule

GP301 = Rule(
    code="GP301",
    name="saturated-gates",
    severity="warning",
    summary="Large share of gate/tanh activations in their flat regions",
    thresholds={"max_fraction": 0.5, "max_gate_fraction": 0.9, "error_fraction": 0.95},
    what_it_does=(
        "Averages, per layer and gate, the share of activations in the flat region (sigmoid outside [0.05, 0.95], "
        "tanh beyond +-0.95; for the forget gate only the closed side, below 0.05). Flags tanh outputs and closed "
        "forget gates above max_fraction, other sigmoid gates above max_gate_fraction (gates that learned to be binary are normal, and "
        "chrono init closes input gates on purpose); error above error_fraction."
    ),
    why_bad="A saturated unit passes almost no gradient (sigmoid' < 0.05, tanh' < 0.1), and a closed forget gate erases memory.",
    example="nn.init.normal_(rnn.weight_ih_l0, std=3.0)   # pre-activations of +-30",
    use_instead="gradprobe.fixes.reinit.xavier_input_(rnn); normalize inputs",
)

GP302 = Rule(
    code="GP302",
    name="dead-relu",
    severity="warning",
    summary="ReLU RNN units that never activate",
    thresholds={"max_dead_fraction": 0.25, "max_zero_fraction": 0.9},
    what_it_does="Counts ReLU units that are zero on every sampled step and row, and the overall share of zero activations.",
    why_bad="A dead unit has zero slope everywhere: neither it nor its incoming weights ever learn again.",
    example="nn.init.constant_(rnn.bias_ih_l0, -1.0)   # pushes pre-activations below zero",
    use_instead="gradprobe.fixes.reinit.identity_recurrent_(rnn)   # IRNN: W_hh = I, zero bias",
)


STRICT = TANH_GATES | {"forget"}  # judged against max_fraction: a closed forget gate erases memory


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(GP301)
    register(GP302)


@hookimpl
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> Iterable[Finding] | None:
    if event.get("kind") != "saturation":
        return None
    layers = context.state("GP3xx").setdefault("layers", {})
    entry = layers.setdefault(event["layer"], {"sums": {}, "count": 0, "dead": [], "mode": event.get("mode"), "units": 0})
    entry["count"] += 1
    entry["step"] = event.get("step")
    entry["units"] = int(event.get("units") or 0)
    low = event.get("low") or {}
    for gate, value in (event.get("fractions") or {}).items():
        # an open forget gate is memory, not a problem: count only its closed side
        share = low.get(gate, 0.0) if gate == "forget" else value
        entry["sums"][gate] = entry["sums"].get(gate, 0.0) + float(share)
    if event.get("dead_units") is not None:
        entry["dead"] = (entry["dead"] + [int(event["dead_units"])])[-5:]
    return None


@hookimpl
def gradprobe_summarize(context: RuleContext) -> Iterable[Finding] | None:
    found: list[Finding | None] = []
    for layer, entry in context.state("GP3xx").get("layers", {}).items():
        count = max(entry["count"], 1)
        means = {gate: total / count for gate, total in entry["sums"].items()}
        if entry["mode"] == "RNN_RELU":
            found.append(_dead(context, layer, entry, means))
            continue
        over = {
            gate: share
            for gate, share in means.items()
            if share > context.threshold("GP301", "max_fraction" if gate in STRICT else "max_gate_fraction")
        }
        if not over:
            continue
        worst_gate, worst = max(over.items(), key=lambda item: item[1])
        severity = "error" if worst > context.threshold("GP301", "error_fraction") else "warning"
        what = "closed" if worst_gate == "forget" else "saturated"
        found.append(
            context.finding(
                "GP301",
                f"{worst:.0%} of {worst_gate} activations {what} in {layer} (mean over {entry['count']} sampled steps)",
                layer=layer,
                step=entry.get("step"),
                severity=severity,
                evidence={"gate": worst_gate, "fraction": worst, "fractions": means, "samples": entry["count"]},
                fix="Xavier input init (fixes.reinit.xavier_input_), normalize or rescale inputs; for a closed forget gate set its bias to 1",
            )
        )
    return found


def _dead(context: RuleContext, layer: str, entry: dict[str, Any], means: dict[str, float]) -> Finding | None:
    units = entry["units"] or 1
    dead = min(entry["dead"]) if entry["dead"] else 0
    zero = means.get("relu", 0.0)
    dead_fraction = dead / units
    if dead_fraction <= context.threshold("GP302", "max_dead_fraction") and zero <= context.threshold("GP302", "max_zero_fraction"):
        return None
    return context.finding(
        "GP302",
        f"{dead} of {units} ReLU units never active and {zero:.0%} of activations zero in {layer}",
        layer=layer,
        step=entry.get("step"),
        severity="error" if dead == units else "warning",
        evidence={"dead_units": dead, "units": units, "dead_fraction": dead_fraction, "zero_fraction": zero},
        fix="IRNN init: identity recurrent weights and zero biases (fixes.reinit.identity_recurrent_), He input weights",
    )
