"""GP301 saturated-gates: gate and tanh activations in their flat regions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradprobe.actions import action
from gradprobe.cell_modes import TANH_GATES, is_relu
from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl, observes
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

RULE = Rule(
    code="GP301",
    name="saturated-gates",
    severity="warning",
    raises=("info", "warning", "error"),
    summary="Large share of gate/tanh activations in their flat regions",
    thresholds={
        "max_fraction": 0.5,
        "max_gate_fraction": 0.9,
        "error_fraction": 0.95,
        "stall_min_steps": 100,
        "min_improvement": 0.1,
        "rise": 0.25,
        "recurrent_gain_above": 2.0,
        "gated_recurrent_gain_above": 4.0,
        "input_ratio_above": 4.0,
        "bias_above": 2.0,
    },
    what_it_does=(
        "Averages, per layer and gate, the share of activations in the flat region (sigmoid outside [0.05, 0.95], "
        "tanh beyond +-0.95; for the forget gate only the closed side, below 0.05). Flags tanh outputs and closed "
        "forget gates above max_fraction, other sigmoid gates above max_gate_fraction (gates that learned to be binary "
        "are normal, and chrono init closes input gates on purpose); error above error_fraction. Saturation present "
        "from the first samples (input scale, initialization) is a warning or error; saturation a layer developed "
        "while the loss improves is info, and a warning once the loss stalls or diverges. The fix names the weights "
        "the evidence points at, read from the layer's weights at attach time (the run log's meta event): "
        "recurrent weights whose sigma_max is over recurrent_gain_above (gated_recurrent_gain_above for LSTM/GRU) "
        "get an orthogonal re-initialization, input weights over input_ratio_above x Xavier's std get Xavier's; "
        "a gate whose bias (b_ih + b_hh) is beyond +-bias_above is said to be held there by its bias; with none of "
        "these, the inputs' scale is the suspect."
    ),
    why_bad="A saturated unit passes almost no gradient (sigmoid' < 0.05, tanh' < 0.1), and a closed forget gate erases memory.",
    known_problems=(
        "tanh(c_t) of a trained LSTM that counts or remembers can sit at +-1 on purpose; the cell state is judged "
        "only above error_fraction."
    ),
    example="nn.init.normal_(rnn.weight_ih_l0, std=3.0)   # pre-activations of +-30",
    use_instead="gradprobe.fixes.reinit.xavier_input_(rnn); normalize inputs",
    fix_safety="Re-initialization is unsafe: only gradprobe.fixes.apply runs it; input scaling is a change to your data.",
    references="Glorot, Bengio 2010.",
)

#: Samples that show the saturation a layer starts training with.
EARLY_SAMPLES = 3

#: Judged against max_fraction: tanh outputs and a closed forget gate (memory erased).
STRICT = (TANH_GATES - {"cell_state"}) | {"forget"}


@dataclass
class LayerSaturation:
    """Running means of one track's saturation samples."""

    mode: str | None
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    step: int | None = None
    early_sums: dict[str, float] = field(default_factory=dict)
    early_count: int = 0
    #: Per gate, the sample step from which its share has been over its limit without a break.
    over_since: dict[str, int | None] = field(default_factory=dict)

    def means(self) -> dict[str, float]:
        return {gate: total / max(self.count, 1) for gate, total in self.sums.items()}

    def early_means(self) -> dict[str, float]:
        return {gate: total / max(self.early_count, 1) for gate, total in self.early_sums.items()}


@dataclass
class State:
    layers: dict[str, LayerSaturation] = field(default_factory=dict)
    #: ``(max_fraction, max_gate_fraction, error_fraction)``, read once per run (a run's thresholds do not change).
    limits: tuple[float, float, float] | None = None


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
@observes("saturation")
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    if event.get("kind") != "saturation" or is_relu(event.get("mode")):
        return None
    state = context.state("GP301", State)
    layer = str(event["layer"])
    entry = state.layers.get(layer)
    if entry is None:
        entry = state.layers[layer] = LayerSaturation(event.get("mode"))
    entry.count += 1
    entry.step = event.get("step")
    early = entry.early_count < EARLY_SAMPLES
    entry.early_count += int(early)
    shares = dict(event.get("fractions") or {})
    if "forget" in shares:  # an open forget gate is memory, not a problem: count only its closed side
        shares["forget"] = (event.get("low") or {}).get("forget", 0.0)
    sums, early_sums = entry.sums, entry.early_sums
    for gate, value in shares.items():
        share = shares[gate] = float(value)
        sums[gate] = sums.get(gate, 0.0) + share
        if early:
            early_sums[gate] = early_sums.get(gate, 0.0) + share
    if state.limits is None:
        state.limits = _limits(context)
    over, since = _over(state.limits, shares), entry.over_since
    for gate in shares:  # since when: the start of the latest unbroken stretch over the limit
        if gate in over:
            since.setdefault(gate, entry.step)
        elif gate in since:
            del since[gate]
    return None


def _limits(context: RuleContext) -> tuple[float, float, float]:
    return (
        context.threshold("GP301", "max_fraction"),
        context.threshold("GP301", "max_gate_fraction"),
        context.threshold("GP301", "error_fraction"),
    )


def _over(limits: tuple[float, float, float], means: dict[str, float]) -> dict[str, float]:
    """The gates whose share is over their limit: ``max_fraction`` for tanh outputs and the forget gate's closed
    side, ``error_fraction`` for the cell state, ``max_gate_fraction`` for the other gates."""
    strict, gate_limit, error_fraction = limits
    over = {}
    for gate, share in means.items():
        limit = strict if gate in STRICT else error_fraction if gate == "cell_state" else gate_limit
        if share > limit:
            over[gate] = share
    return over


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    found = []
    error_fraction = context.threshold("GP301", "error_fraction")
    loss = context.run.loss
    troubled = (
        loss.nonfinite > 0
        or loss.divergence(context.threshold("GP301", "rise")) is not None
        or loss.stalled(
            int(context.threshold("GP301", "stall_min_steps")), context.threshold("GP301", "min_improvement")
        )
    )
    for layer, entry in context.state("GP301", State).layers.items():
        means = entry.means()
        over = _over(_limits(context), means)
        if not over:
            continue
        worst_gate, worst = max(over.items(), key=lambda item: item[1])
        from_start = worst_gate in _over(_limits(context), entry.early_means())
        if from_start or troubled:
            severity = "error" if worst > error_fraction else "warning"
            why = "from the first samples" if from_start else "and the loss is not improving"
        else:
            gained = loss.improvement()
            severity = "info"
            if gained is not None and gained > 0:
                why = f"developed in training while the loss improves ({gained:.0%} of its start gone)"
            else:  # say only what was measured: the loss is neither stalled nor diverging, nor has it improved
                why = "developed in training; the loss shows no harm yet (neither stalled nor diverging)"
        closed = worst_gate == "forget"
        blame = _blame(context, layer, entry.mode, worst_gate)
        fixes = (action("forget-bias", value=1.0),) if closed else blame.fixes
        cause = "" if closed or not blame.text else f"; {blame.text}"
        finding = context.finding(
            "GP301",
            f"{worst:.0%} of {worst_gate} activations {'closed' if closed else 'saturated'} in {layer} "
            f"(mean over {entry.count} sampled steps), {why}{cause}",
            layer=layer,
            step=entry.step,
            severity=severity,
            evidence={
                "gate": worst_gate,
                "fraction": worst,
                "fractions": means,
                "samples": entry.count,
                "early_fractions": entry.early_means(),
                "from_start": from_start,
                **blame.numbers,
            },
            fixes=fixes,
            first_step=entry.over_since.get(worst_gate),
        )
        found.append(finding)
    return found


@dataclass
class Blame:
    """Which weights drive a saturated layer, as far as its weight scales tell."""

    fixes: tuple[Any, ...]
    text: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


def _blame(context: RuleContext, track: str, mode: str | None, gate: str) -> Blame:
    """The fixes for a saturated track: the recurrent weights, the input weights, a gate's bias, or the inputs' scale."""
    scales: dict[str, Any] = {}
    for layer in context.meta.get("layers") or []:
        found = layer.get("scales") if isinstance(layer, dict) else None
        if isinstance(found, dict) and isinstance(found.get(track), dict):
            scales = found[track]
    recurrent, inputs = scales.get("recurrent"), scales.get("input")
    gated = mode in ("LSTM", "GRU")
    gain_limit = context.threshold("GP301", "gated_recurrent_gain_above" if gated else "recurrent_gain_above")
    recurrent_cause = isinstance(recurrent, (int, float)) and recurrent > gain_limit
    input_cause = isinstance(inputs, (int, float)) and inputs > context.threshold("GP301", "input_ratio_above")
    biases = scales.get("bias")
    bias = biases.get(gate) if isinstance(biases, dict) else None
    numbers = {"recurrent_sigma_max": recurrent, "input_std_ratio": inputs, "gate_bias": bias}
    fixes: tuple[Any, ...] = ()
    said = []
    if isinstance(bias, (int, float)) and abs(bias) > context.threshold("GP301", "bias_above"):
        said.append(f"the {gate} gate's bias {bias:+.3g} holds it there")
    if recurrent_cause:
        fixes += (action("orthogonal-recurrent"),)
        said.append(f"recurrent weights with sigma_max {recurrent:.3g} > {gain_limit:g} drive it")
    if input_cause:
        fixes += (action("xavier-input"),)
        said.append(f"input weights at {inputs:.3g}x Xavier's std drive it")
    if not fixes and not said:
        fixes = (action("normalize-inputs"), action("xavier-input"))
        if recurrent is not None and inputs is not None:
            said.append("its weights are in range: the inputs' scale is the suspect")
    return Blame(fixes, " and ".join(said), numbers)
