"""GP203 input-weight-scale: input weights far from Xavier/He scale."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from gradprobe.discovery import RecurrentSite, gate_count
from gradprobe.findings import Finding, RuleResult
from gradprobe.fixes.actions import action
from gradprobe.fixes.reinit import xavier_std
from gradprobe.hookspecs import hookimpl
from gradprobe.reference.functional import is_relu
from gradprobe.rules.context import RuleContext
from gradprobe.rules.registry import Rule
from gradprobe.rules.weights import each_direction

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
    return [_input_scale(context, site, track, params) for site, track, params in each_direction(context.sites)]


def _input_scale(context: RuleContext, site: RecurrentSite, track: str, params: dict[str, Tensor]) -> Finding | None:
    weight = params["weight_ih"].detach().double()
    mode = site.mode or ""
    count = gate_count(mode)
    fan_out, fan_in = weight.shape[0] // count, weight.shape[1]
    relu = is_relu(mode)
    reference = math.sqrt(2.0 / fan_in) if relu else xavier_std(fan_in, fan_out)
    scheme = "He" if relu else "Xavier"
    fixes = (action("he-input" if relu else "xavier-input"),)
    stds = [float(block.std()) for block in weight.chunk(count, dim=0)]
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
