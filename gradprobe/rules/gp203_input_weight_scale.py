"""GP203 input-weight-scale: input weights far from Xavier/He scale."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gradprobe.actions import action
from gradprobe.findings import Finding, RuleResult
from gradprobe.hookspecs import hookimpl
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

if TYPE_CHECKING:
    from torch import Tensor, nn

    from gradprobe.discovery import RecurrentSite

RULE = Rule(
    code="GP203",
    name="input-weight-scale",
    severity="warning",
    summary="Input weights far from Xavier/He scale",
    thresholds={"max_ratio": 4.0, "min_ratio": 0.125},
    what_it_does=(
        "Compares the standard deviation of each gate block of W_ih with Glorot/Xavier (He for ReLU RNNs) for its "
        "fan-in and fan-out; flags ratios above max_ratio or below min_ratio."
    ),
    why_bad="Too large saturates gates and tanh from the first step; too small starves the recurrence of input signal.",
    example="nn.init.normal_(lstm.weight_ih_l0, std=1.0)",
    use_instead="gradprobe.fixes.reinit.xavier_input_(lstm)",
    fix_safety="Re-initialization is unsafe: only gradprobe.fixes.apply runs it.",
    references="Glorot, Bengio 2010; He et al. 2015.",
    static=True,
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_lint(model: nn.Module, context: RuleContext) -> RuleResult:
    from gradprobe.rules.weights import each_direction  # torch: only where a model is linted, never in the report

    return [_input_scale(context, site, track, params) for site, track, params in each_direction(context.sites)]


def _input_scale(context: RuleContext, site: RecurrentSite, track: str, params: dict[str, Tensor]) -> Finding | None:
    from gradprobe.layer_weights import input_scale

    scale = input_scale(site.mode or "", params["weight_ih"])
    stds, reference, scheme = scale.stds, scale.reference, scale.scheme
    fixes = (action("he-input" if scheme == "He" else "xavier-input"),)
    ratio, low_ratio = max(stds) / reference, min(stds) / reference
    evidence = {"std": max(stds), "reference_std": reference, "ratio": ratio, "scheme": scheme}
    if ratio > context.threshold("GP203", "max_ratio"):
        return context.finding(
            "GP203",
            f"input weight std {max(stds):.3g} is {ratio:.1f}x {scheme}'s {reference:.3g} in {track}: pre-activations saturate",
            layer=track,
            evidence=evidence,
            fixes=fixes,
        )
    if low_ratio < context.threshold("GP203", "min_ratio"):
        return context.finding(
            "GP203",
            f"input weight std {min(stds):.3g} is {low_ratio:.2f}x {scheme}'s {reference:.3g} in {track}: input barely reaches the state",
            layer=track,
            evidence={**evidence, "std": min(stds), "ratio": low_ratio},
            fixes=fixes,
        )
    return None
