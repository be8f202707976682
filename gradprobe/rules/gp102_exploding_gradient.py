"""GP102 exploding-gradient: a gradient signal growing through time, or repeated gradient-norm spikes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gradprobe.actions import action
from gradprobe.findings import Finding, RuleResult
from gradprobe.hookspecs import hookimpl
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext
from gradprobe.rules.evidence import EXPLODING_SIGNALS, spike_judgement

RULE = Rule(
    code="GP102",
    name="exploding-gradient",
    severity="error",
    raises=("info", "warning", "error"),
    summary="Gradient signal grows through time, or gradient norms spike repeatedly",
    thresholds={"max_growth": 100.0},
    signals=EXPLODING_SIGNALS,
    what_it_does=(
        "Flags (error) a propagation profile whose fitted growth over the sequence exceeds max_growth. Counts the "
        "training steps whose total gradient norm is more than spike_factor x the running median of the last "
        "spike_window steps. Spikes are info while the loss keeps improving; a warning when they hurt: the loss "
        "diverges (the loss_rise signal) or turns non-finite, one spike is over extreme_factor x the median, or min_spikes "
        "repeat with no loss recorded (error when repeated and harmful). With clipping in place spikes are info, "
        "unless the probe's clipping keeps firing at norms over 10x its threshold: then the cause is structural and "
        "re-initialization is recommended."
    ),
    why_bad="Per-step Jacobians with norm > 1 multiply up: updates become huge, loss jumps, weights diverge or hit NaN.",
    known_problems="Early training can spike once or twice while the loss is still falling; that alone is info.",
    example="with torch.no_grad():\n    rnn.weight_hh_l0.mul_(3)  # spectral norm ~3",
    use_instead=(
        "loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm); opt.step()\n"
        "# or: gradprobe.attach(model, fix='auto')   # robust automatic clipping"
    ),
    fix_safety="Clipping is safe (applied by fix='auto'); re-initialization is unsafe (gradprobe.fixes.apply).",
    references="Pascanu, Mikolov, Bengio 2013; ZClip (Kumar et al. 2025).",
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    found = [_growth(context, name) for name in context.run.tracks]
    found.append(_spikes(context))
    return found


def growth_over_sequence(rate: float | None, seq_len: int) -> float | None:
    """``exp(rate * (T - 1))`` for a growing profile, else ``None``."""
    if rate is None or rate <= 0:
        return None
    return math.exp(min(rate * max(seq_len - 1, 1), 700.0))


def _growth(context: RuleContext, name: str) -> Finding | None:
    track = context.run.tracks[name]
    rate = track.rate()
    growth = growth_over_sequence(rate, track.latest.seq_len)
    if growth is None or rate is None or growth <= context.threshold("GP102", "max_growth"):
        return None
    return context.finding(
        "GP102",
        f"gradient signal grows x{math.exp(rate):.2f} per step (x{growth:.3g} over {track.latest.seq_len} steps) in {name}",
        layer=name,
        step=track.latest.step,
        evidence={"rate": rate, "growth": growth, "seq_len": track.latest.seq_len, "probes": track.probes},
        fixes=(action("clip-grad-norm-auto"), action("orthogonal-recurrent")),
    )


def _spikes(context: RuleContext) -> Finding | None:
    norms, run = context.run.norms, context.run
    if not norms.spikes:
        return None
    clipped, how, threshold = run.clipping.in_place(norms, context.run.signals.min_pinned_fraction)
    repeated = norms.spikes >= context.run.signals.min_spikes
    judged = spike_judgement(context)
    diverging = run.loss_divergence() is not None or run.loss.nonfinite > 0
    far = run.clipping.far_above
    evidence: dict[str, Any] = {
        "spikes": norms.spikes,
        "max_ratio": norms.max_spike_ratio,
        "first_spike_step": norms.first_spike_step,
        "median_norm": norms.median,
        "max_norm": norms.maximum,
        "clipping": how or None,
        "clip_threshold": threshold,
    }
    text = (
        f"{norms.spikes} gradient-norm spike{'s' if norms.spikes > 1 else ''} over {norms.spike_factor:g}x the running median "
        f"(up to {norms.max_spike_ratio:.0f}x, first at step {norms.first_spike_step})"
    )
    if far >= context.run.signals.min_spikes:
        severity = "error" if diverging or far >= 0.5 * max(norms.steps, 1) else "warning"
        evidence["clipped_far_above"] = far
        return context.finding(
            "GP102",
            f"{text}; clipping keeps firing at norms over 10x its threshold ({far} steps): the cause is structural",
            step=norms.first_spike_step,
            severity=severity,
            evidence=evidence,
            fixes=(action("orthogonal-recurrent"), action("lower-learning-rate", factor=10)),
        )
    if clipped:
        severity = "info"
        text += f"; bounded by clipping ({how})"
    elif judged.harmful:
        severity = "error" if repeated else "warning"
        text += f" {judged.reason}"
    else:
        severity = "info"
        text += f" {judged.reason}"
    return context.finding(
        "GP102",
        text,
        step=norms.first_spike_step,
        severity=severity,
        evidence=evidence,
        fixes=() if clipped else (action("clip-grad-norm-auto"),),
    )
