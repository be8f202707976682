"""GP4xx training setup: exploding risk without clipping (GP401), truncation vs horizon (GP402)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from gradprobe.events import finite_number
from gradprobe.findings import Finding
from gradprobe.fixes.clipping import quantile
from gradprobe.fixes.truncation import truncation_length
from gradprobe.hookspecs import hookimpl
from gradprobe.rules.context import RuleContext
from gradprobe.rules.registry import Rule

GP401 = Rule(
    code="GP401",
    name="no-clipping-with-exploding-risk",
    severity="warning",
    summary="Gradient spikes or growth observed and no clipping in place",
    thresholds={"min_pinned_fraction": 0.05},
    what_it_does=(
        "Looks for signs of clipping: fix events of the probe's own clipping, or a gradient norm pinned at the same "
        "maximum in at least min_pinned_fraction of the steps (clip_grad_norm_ before probe.step). When GP102 saw "
        "spikes or growth and there is no sign of clipping, it suggests a threshold from the observed norms."
    ),
    why_bad="Without clipping one exploding step can undo a whole run of training (Pascanu et al. 2013).",
    example="loss.backward(); probe.step(loss); opt.step()",
    use_instead="loss.backward()\ntorch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)\nprobe.step(loss); opt.step()",
)

GP402 = Rule(
    code="GP402",
    name="truncation-vs-horizon",
    severity="info",
    summary="BPTT window far from the measured gradient horizon",
    thresholds={"waste_factor": 4.0, "short_factor": 2.0},
    what_it_does=(
        "Compares the BPTT window (the declared truncation, else the sequence length seen) with the measured "
        "horizon: a window over waste_factor x the horizon spends compute on steps no gradient reaches (info); a "
        "declared truncation shorter than the horizon / short_factor cuts dependencies the model could learn (warning)."
    ),
    why_bad="Too long: compute and memory for nothing. Too short: the model never sees the dependencies it could carry.",
    example="for x in chunks(seq, 500): ...   # horizon 20",
    use_instead="tbptt = gradprobe.fixes.TruncatedBPTT(gradprobe.fixes.truncation_length(horizon, seq_len))",
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(GP401)
    register(GP402)


@hookimpl
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> Iterable[Finding] | None:
    kind = event.get("kind")
    state = context.state("GP4xx")
    if kind == "step":
        norm = finite_number(event.get("grad_norm"))
        if norm is None:
            return None
        state["steps"] = state.get("steps", 0) + 1
        norms = state.setdefault("norms", deque(maxlen=1000))
        norms.append(norm)
        top = state.get("max", 0.0)
        if top and abs(norm - top) <= 1e-4 * top:
            state["pinned"] = state.get("pinned", 0) + 1
        elif norm > top:
            state["max"], state["pinned"] = norm, 1
    elif kind == "fix" and str(event.get("name", "")).startswith(("clip", "adaptive")) and event.get("applied"):
        state["clipping_events"] = state.get("clipping_events", 0) + 1
    elif kind == "deep":
        horizons = state.setdefault("horizons", {})
        history = horizons.setdefault(event["layer"], deque(maxlen=5))
        horizon = finite_number(event.get("horizon"))
        history.append((math.inf if horizon is None else horizon, int(event.get("seq_len", 0)), event.get("step")))
    return None


@hookimpl
def gradprobe_summarize(context: RuleContext) -> Iterable[Finding] | None:
    return [_clipping(context), *_truncation(context)]


def _clipping(context: RuleContext) -> Finding | None:
    state = context.state("GP4xx")
    signals = context.state("signals")
    spikes, growth = signals.get("spikes", 0), signals.get("growth", {})
    if not spikes and not growth:
        return None
    steps = max(state.get("steps", 0), 1)
    pinned = state.get("pinned", 0)
    fix_mode = context.meta.get("settings", {}).get("fix")
    if state.get("clipping_events") or fix_mode == "auto" or (pinned >= 3 and pinned / steps >= context.threshold("GP401", "min_pinned_fraction")):
        return None
    norms = list(state.get("norms", []))
    suggested = 2 * quantile(norms, 0.9) if norms else None
    risk = []
    if spikes:
        risk.append(f"{spikes} gradient-norm spikes (up to {signals.get('max_spike_ratio', 0):.0f}x the median)")
    if growth:
        layer, value = max(growth.items(), key=lambda item: item[1])
        risk.append(f"signal growth x{value:.3g} through time in {layer}")
    threshold = f"{suggested:.3g}" if suggested is not None else "a multiple of the typical norm"
    return context.finding(
        "GP401",
        f"{' and '.join(risk)} with no gradient clipping detected; clip by norm at {threshold}",
        evidence={
            "spikes": spikes,
            "growth": growth,
            "median_norm": statistics.median(norms) if norms else None,
            "suggested_max_norm": suggested,
        },
        fix=f"torch.nn.utils.clip_grad_norm_(model.parameters(), {threshold}) after backward, or attach(..., fix='auto')",
    )


def _truncation(context: RuleContext) -> list[Finding | None]:
    settings = context.meta.get("settings", {})
    declared = settings.get("truncation")
    found: list[Finding | None] = []
    for layer, history in context.state("GP4xx").get("horizons", {}).items():
        horizon = statistics.median(h for h, _, _ in history)
        seen = max(length for _, length, _ in history)
        window = int(declared or seen)
        step = history[-1][2]
        evidence = {"horizon": None if math.isinf(horizon) else horizon, "window": window, "declared": declared is not None}
        if declared and horizon > context.threshold("GP402", "short_factor") * window:
            shown = "does not decay" if math.isinf(horizon) else f"reaches {horizon:.0f} steps"
            found.append(
                context.finding(
                    "GP402",
                    f"truncation {window} steps is short: the gradient signal {shown} in {layer}",
                    layer=layer,
                    step=step,
                    severity="warning",
                    evidence=evidence,
                    fix=f"lengthen the BPTT window to ~{truncation_length(None if math.isinf(horizon) else horizon, 10**9)} steps",
                )
            )
        elif not math.isinf(horizon) and window > context.threshold("GP402", "waste_factor") * max(horizon, 1.0):
            suggested = truncation_length(horizon, window)
            found.append(
                context.finding(
                    "GP402",
                    f"BPTT over {window} steps but gradients fade after {horizon:.0f} in {layer}: {suggested}-step windows carry the same signal",
                    layer=layer,
                    step=step,
                    evidence={**evidence, "suggested": suggested},
                    fix=f"truncated BPTT with fixes.TruncatedBPTT({suggested}) (fixes.truncation_length(horizon, seq_len))",
                )
            )
    return found
