"""GP401 no-clipping-with-exploding-risk: spikes or growth, and nothing bounds the gradients the optimizer consumes."""

from __future__ import annotations

from collections.abc import Callable

from gradprobe.actions import action
from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext
from gradprobe.rules.evidence import EXPLODING_SIGNALS, spike_judgement
from gradprobe.rules.gp102_exploding_gradient import growth_over_sequence

RULE = Rule(
    code="GP401",
    name="no-clipping-with-exploding-risk",
    severity="warning",
    summary="Repeated gradient spikes or growth through time, and no clipping in place",
    thresholds={"max_growth": 100.0},
    signals=EXPLODING_SIGNALS,
    what_it_does=(
        "Weighs the exploding risk (GP102's harmful spikes, a profile growing past max_growth, or a "
        "diverging loss) against the signs of clipping: clipping seen between backward and the optimizer step "
        "(attach(..., optimizer=opt)), a declared threshold (attach(..., grad_clip=)), the probe's "
        "own clipping (fix='auto'), or a gradient norm pinned at the same maximum in at least the min_pinned_fraction signal of "
        "the steps (clip_grad_norm_ before probe.step). With risk and no clipping it suggests twice the median norm "
        "of the first steps whose loss was not rising (the healthy scale, never a norm of the explosion); with "
        "clipping it stays silent."
    ),
    why_bad="Without clipping one exploding step can undo a whole run of training (Pascanu et al. 2013).",
    known_problems=(
        "Without optimizer hooks, clipping after probe.step() is invisible unless declared: pass optimizer= or "
        "grad_clip= to attach()."
    ),
    example="loss.backward(); probe.step(loss); opt.step()",
    use_instead="loss.backward()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\nprobe.step(loss); opt.step()",
    fix_safety="Clipping by norm is safe: fix='auto' applies it.",
    references="Pascanu, Mikolov, Bengio 2013; Mikolov 2012.",
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    run = context.run
    norms = run.norms
    clipped, _, _ = run.clipping.in_place(norms, context.run.signals.min_pinned_fraction)
    if clipped:
        return None
    risk, since = [], []
    if spike_judgement(context).harmful:
        since.append(norms.first_spike_step)
        risk.append(
            f"{norms.spikes} gradient-norm spike{'s' if norms.spikes > 1 else ''} (up to {norms.max_spike_ratio:.0f}x the median)"
        )
    growth = {}
    for name, track in run.tracks.items():
        value = growth_over_sequence(track.rate(), track.latest.seq_len)
        if value is not None and value > context.threshold("GP401", "max_growth"):
            growth[name] = value
    if growth:
        layer, value = max(growth.items(), key=lambda item: item[1])
        track = run.tracks[layer]
        since.append(track.first_above(track.max_seq_len))  # growth: the signal outlasts the sequence
        risk.append(f"signal growth x{value:.3g} through time in {layer}")
    divergence = run.loss_divergence()
    if divergence is not None:
        since.append(divergence.get("best_step"))
        risk.append(f"a diverging loss ({divergence['best']:.4g} -> {divergence['latest']:.4g})")
    if not risk:
        return None
    healthy = norms.healthy_median  # never a norm measured during the explosion
    suggested = 2 * healthy if healthy is not None else None
    fixes = (action("clip-grad-norm", max_norm=suggested),) if suggested else (action("clip-grad-norm-auto"),)
    threshold = f"{suggested:.3g}" if suggested is not None else "a multiple of the typical norm"
    first = min((step for step in since if step is not None), default=None)
    last = norms.last_step if norms.last_step is not None else run.loss.last_step
    return [
        context.finding(
            "GP401",
            f"{' and '.join(risk)} with no gradient clipping detected; clip by norm at {threshold}",
            evidence={
                "spikes": norms.spikes,
                "growth": growth,
                "median_norm": norms.median,
                "healthy_median_norm": healthy,
                "suggested_max_norm": suggested,
            },
            step=last if last is not None else first,
            fixes=fixes,
            first_step=first,
        )
    ]
