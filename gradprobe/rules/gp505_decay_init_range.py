"""GP505 decay-init-range: a linear recurrence initialized outside its documented range (lint, no data)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gradprobe.actions import action
from gradprobe.findings import Finding, FixAction, RuleResult
from gradprobe.hookspecs import hookimpl
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

if TYPE_CHECKING:
    from torch import nn

RULE = Rule(
    code="GP505",
    name="decay-init-range",
    severity="warning",
    raises=("info", "warning", "error"),
    summary="A linear recurrence's decays start outside their documented range (|a| >= 1, pinned at 1, or no memory)",
    thresholds={"max_decay": 0.9999, "min_top_decay": 0.3679, "max_gain_ratio": 4.0},
    what_it_does=(
        "Reads the decays a diagonal linear recurrence starts from, without data (its adapter's static reading: an "
        "LRU's |lambda|; for a selective layer, the decays its biases give at a zero input, e.g. Mamba's "
        "exp(-softplus(dt_bias) exp(A_log))). Error: a decay above 1 (the state grows). Warning: decays at or "
        "above max_decay (pinned at 1: no forgetting, exploding sensitivity); the slowest decay below min_top_decay "
        "(1/e: no channel keeps its state for even one step, a collapsed Delta); an input gain (an LRU's gamma) more "
        "than max_gain_ratio away from the normalization sqrt(1 - |lambda|^2) in the median channel. Info: an adapter "
        "whose static reading failed (the layer's initialization was not checked)."
    ),
    why_bad=(
        "Linear recurrences train well only from a documented initialization: an LRU's eigenvalues on a ring "
        "inside the unit disk with normalized inputs, Mamba's Delta log-uniform in [1e-3, 1e-1] and A = -(1..N). "
        "Outside it the state explodes, never forgets, or forgets everything at once."
    ),
    example="gradprobe.reference.LRU(8, 64, r_min=0.9999, r_max=1.0)",
    use_instead="gradprobe.reference.LRU(8, 64, r_min=0.9, r_max=0.999)",
    fix_safety="The ring re-initialization is unsafe: only gradprobe.fixes.apply runs it.",
    references="Orvieto et al. 2023, section 3; Gu & Dao 2023, section 3.6 and appendix.",
    static=True,
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_lint(model: nn.Module, context: RuleContext) -> RuleResult:
    found: list[Finding | None] = []
    for site in context.sites:
        adapter = getattr(site, "adapter", None)
        if adapter is None or adapter.static_decays is None:
            continue
        try:  # an adapter is a plugin's code: its failure leaves this layer unchecked, said so, and no other
            decays = adapter.static_decays(site.module)
            gain = adapter.input_gain(site.module) if adapter.input_gain is not None else None
        except Exception as exc:  # noqa: BLE001
            found.append(
                context.finding(
                    "GP505",
                    f"{site.name} ({adapter.kind}): initialization not checked, its adapter's static reading failed "
                    f"({type(exc).__name__}: {exc})",
                    layer=site.name,
                    severity="info",
                    evidence={"recurrence": adapter.kind, "error": f"{type(exc).__name__}: {exc}"},
                )
            )
            continue
        if decays is None or decays.numel() == 0:
            continue
        found.extend(_judge(context, site.name, adapter.kind, adapter.documented, decays, gain))
    return found


def _judge(
    context: RuleContext, layer: str, kind: str, documented: str, decays: Any, gain: Any
) -> list[Finding | None]:
    """One finding per layer, listing every problem, at the worst problem's severity."""
    import torch  # only where a model is linted

    magnitude = decays.detach().abs().to(torch.float64).flatten()
    top, bottom = float(magnitude.max()), float(magnitude.min())
    limit = context.threshold("GP505", "max_decay")
    pinned = int((magnitude >= limit).sum())
    evidence: dict[str, Any] = {"top_decay": top, "min_decay": bottom, "channels": int(magnitude.numel())}
    problems: list[tuple[str, str]] = []
    if top > 1.0 + 1e-6:
        problems.append(("error", f"decays above 1 (largest {top:.6g}): the state grows without bound"))
    elif pinned:
        problems.append(
            (
                "warning",
                (
                    f"{pinned} of {magnitude.numel()} decays at or above {limit:g} (largest {top:.6g}): pinned at 1, "
                    "no forgetting and an exploding sensitivity"
                ),
            )
        )
    if top < context.threshold("GP505", "min_top_decay"):
        tau = -1 / math.log(top) if 0 < top < 1 else 0.0
        problems.append(
            ("warning", f"no memory: its slowest decay is {top:.4g} per step (time constant {tau:.2f} steps)")
        )
    if gain is not None:
        normalization = torch.sqrt((1 - magnitude**2).clamp_min(0))
        judged = normalization > 1e-6  # at |a| = 1 the normalization is 0: the pinned decay is the problem
        if bool(judged.any()):
            ratio = gain.detach().abs().to(torch.float64).flatten()[judged] / normalization[judged]
            median = float(ratio.median())
            bound = context.threshold("GP505", "max_gain_ratio")
            if not 1 / bound <= median <= bound:
                evidence["gain_ratio"] = median
                problems.append(
                    ("warning", f"an input gain {median:.3g}x the normalization sqrt(1 - |a|^2) (median channel)")
                )
    if not problems:
        return []
    severity = "error" if any(level == "error" for level, _ in problems) else "warning"
    reinit: tuple[FixAction, ...] = (
        (action("lru-ring-init", r_min=0.9, r_max=0.999),)
        if kind == "lru"
        else (action("decay-init", documented=documented or "the layer's documented range"),)
    )
    what = "; ".join(text for _, text in problems)
    return [
        context.finding(
            "GP505",
            f"{layer} ({kind}) starts with {what}" + (f"; documented: {documented}" if documented else ""),
            layer=layer,
            severity=severity,
            evidence={**evidence, "recurrence": kind},
            fixes=reinit,
        )
    ]
