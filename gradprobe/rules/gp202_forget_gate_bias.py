"""GP202 forget-gate-bias: an LSTM forget-gate bias <= 0 forgets from the first step."""

from __future__ import annotations

import math
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
    code="GP202",
    name="forget-gate-bias",
    severity="warning",
    raises=("info", "warning", "error"),
    summary="LSTM forget-gate bias <= 0 (memory decays from the start)",
    thresholds={"warn_below": -0.5, "error_below": -2.0},
    what_it_does=(
        "Averages the effective forget-gate bias b_if + b_hf of each LSTM layer. <= 0 is reported as info (torch's "
        "default init), below warn_below as a warning and below error_below as an error."
    ),
    why_bad="With f_t = sigmoid(b_f + ...) near or below 0.5 the cell state halves every step: dL/dc_{t-k} ~ 0.5^k.",
    example="lstm = nn.LSTM(32, 64)   # forget bias ~ U(-1/8, 1/8) summed twice",
    use_instead="gradprobe.fixes.reinit.forget_bias_(lstm, 1.0)   # or chrono_init_(lstm, max_timescale=T)",
    fix_safety="Re-initialization is unsafe: only gradprobe.fixes.apply runs it.",
    references="Gers, Schmidhuber, Cummins 2000; Jozefowicz, Zaremba, Sutskever 2015.",
    static=True,
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_lint(model: nn.Module, context: RuleContext) -> RuleResult:
    from gradprobe.rules.weights import each_direction  # torch: only where a model is linted, never in the report

    return [
        _forget_bias(context, site, track, params) for site, track, params in each_direction(context.sites, ("LSTM",))
    ]


def _forget_bias(context: RuleContext, site: RecurrentSite, track: str, params: dict[str, Tensor]) -> Finding | None:
    hidden = params["weight_hh"].shape[0] // 4
    parts = [params[k][hidden : 2 * hidden] for k in ("bias_ih", "bias_hh") if k in params]
    if not parts:
        return context.finding(
            "GP202",
            f"{track} has no biases: the forget gate cannot default to remembering",
            layer=track,
            severity="info",
            evidence={"forget_bias": None},
        )
    import torch

    bias = float(torch.stack([p.detach().double() for p in parts]).sum(0).mean())
    if bias > 0:
        return None
    if bias < context.threshold("GP202", "error_below"):
        severity = "error"
    elif bias < context.threshold("GP202", "warn_below"):
        severity = "warning"
    else:
        severity = "info"
    keep = 1 / (1 + math.exp(-bias))
    return context.finding(
        "GP202",
        f"mean forget-gate bias {bias:.2f} <= 0 in {track}: the cell keeps {keep:.0%} per step at rest",
        layer=track,
        severity=severity,
        evidence={"forget_bias": bias, "resting_forget_gate": keep},
        fixes=(action("forget-bias", value=1.0),),
    )
