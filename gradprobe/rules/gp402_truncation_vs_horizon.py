"""GP402 truncation-vs-horizon: a declared BPTT window far longer than a healthy measured horizon."""

from __future__ import annotations

import math
from collections.abc import Callable

from gradprobe.actions import action, truncation_length
from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext
from gradprobe.rules.evidence import vanishing_evidence

RULE = Rule(
    code="GP402",
    name="truncation-vs-horizon",
    severity="info",
    summary="The loop's BPTT window (declared or detected) far from the measured gradient horizon",
    thresholds={"waste_factor": 4.0, "short_factor": 2.0},
    what_it_does=(
        "Speaks only when its advice can be followed: a truncation window, declared (attach(..., truncation=)) or "
        "detected (each step starts from a detached copy of the previous step's final state), over "
        "waste_factor x a healthy horizon (one GP101 has no evidence against) spends compute on steps no gradient "
        "reaches; a window shorter than horizon / short_factor cuts dependencies the model could carry. Never for "
        "bidirectional layers (they see the whole sequence), never a shorter window next to a vanishing gradient."
    ),
    why_bad="Too long: compute and memory for nothing. Too short: the model never sees the dependencies it could carry.",
    known_problems=(
        "Without a declared or detected window it says nothing: the sequence length is not a truncation. A carried "
        "state copied with .clone() rather than .detach() is not recognised as a carry."
    ),
    example="gradprobe.attach(model, truncation=500)   # horizon 20",
    use_instead="tbptt = gradprobe.fixes.TruncatedBPTT(gradprobe.fixes.truncation_length(horizon, seq_len))",
    fix_safety="Display only: the window is part of your training loop.",
    references="Williams, Peng 1990; Sutskever 2013 (truncated BPTT).",
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    declared = context.truncation
    if not isinstance(declared, (int, float)) or isinstance(declared, bool) or declared < 1:
        return None
    window = int(declared)
    found = []
    for name, track in context.run.tracks.items():
        if context.run.is_bidirectional(track):
            continue
        evidence = vanishing_evidence(context, track)
        horizon = evidence.horizon
        numbers = {"horizon": None if math.isinf(horizon) else horizon, "window": window}
        longest = context.threshold("GP402", "short_factor") * window
        shortest = window / context.threshold("GP402", "waste_factor")
        if horizon > longest:
            shown = "does not decay" if math.isinf(horizon) else f"reaches {horizon:.0f} steps"
            longer = truncation_length(None if math.isinf(horizon) else horizon, 10**9)
            found.append(
                context.finding(
                    "GP402",
                    f"truncation {window} steps is short: the gradient signal {shown} in {name}",
                    layer=name,
                    step=track.latest.step,
                    evidence=numbers,
                    fixes=(
                        action("longer-truncation", window=longer)
                        if not math.isinf(horizon)
                        else action("longer-truncation", window=f"{2 * window}+"),
                    ),
                    first_step=track.first_above(longest),
                )
            )
        elif not evidence.hurts and not math.isinf(horizon) and max(horizon, 1.0) < shortest:
            suggested = truncation_length(horizon, window)
            found.append(
                context.finding(
                    "GP402",
                    f"BPTT over {window} steps but gradients fade after {horizon:.0f} in {name}: {suggested}-step windows carry the same signal",
                    layer=name,
                    step=track.latest.step,
                    evidence={**numbers, "suggested": suggested},
                    fixes=(action("shorter-truncation", window=suggested),),
                    first_step=track.first_below(shortest),
                )
            )
    return found
