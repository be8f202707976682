"""GP201 recurrent-spectrum: sigma_max(W_hh) x gamma against 1 (Pascanu's condition)."""

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
    code="GP201",
    name="recurrent-spectrum",
    severity="warning",
    raises=("info", "warning"),
    summary="sigma_max(W_hh) * gamma far from 1 (Pascanu's condition)",
    thresholds={"vanish_below": 1.0, "explode_above": 2.0, "gated_explode_above": 4.0, "min_memory_steps": 3.0},
    what_it_does=(
        "Computes the largest singular value of each recurrent weight (the candidate block for LSTM/GRU) times "
        "gamma, the largest slope of the activation (1 for tanh and ReLU). Above explode_above (gated_explode_above "
        "for LSTM/GRU, whose gates scale the candidate path) gradients can explode: warning. Below vanish_below "
        "vanishing is guaranteed (Pascanu et al. 2013): info, since whether it hurts depends on the task (GP101 "
        "judges that with evidence), unless the product is so small that a gradient falls below 1e-3 within "
        "min_memory_steps steps whatever the inputs (product < 1e-3^(1/min_memory_steps)): a recurrence that carries "
        "no memory at all is a warning. Gated cells are never judged for vanishing."
    ),
    why_bad="||dh_t/dh_{t-1}|| <= gamma * sigma_max(W_hh): the product over T steps shrinks or grows like (gamma sigma)^T.",
    known_problems="Torch's default init gives sigma ~1.15 for tanh RNNs; values within 1e-6 of a threshold are not flagged.",
    example="nn.init.normal_(rnn.weight_hh_l0, std=0.2)   # sigma_max ~ 3 for 64 units",
    use_instead="gradprobe.fixes.reinit.orthogonal_recurrent_(rnn)   # sigma_max = 1",
    fix_safety="Re-initialization is unsafe: only gradprobe.fixes.apply runs it.",
    references="Pascanu, Mikolov, Bengio 2013, section 3.2.",
    static=True,
)

TOLERANCE = 1e-6


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_lint(model: nn.Module, context: RuleContext) -> RuleResult:
    from gradprobe.rules.weights import each_direction  # torch: only where a model is linted, never in the report

    return [_spectrum(context, site, track, params) for site, track, params in each_direction(context.sites)]


def _spectrum(context: RuleContext, site: RecurrentSite, track: str, params: dict[str, Tensor]) -> Finding | None:
    from gradprobe.cell_modes import is_relu
    from gradprobe.layer_weights import recurrent_gain

    mode = site.mode or ""
    sigma = recurrent_gain(mode, params["weight_hh"])
    gamma = 1.0  # max slope of tanh and of ReLU
    value = sigma * gamma
    gated = mode in ("LSTM", "GRU")
    evidence = {"sigma_max": sigma, "gamma": gamma, "product": value}
    block = " (candidate block)" if gated else ""
    identity = "identity-recurrent" if is_relu(mode) else "orthogonal-recurrent"
    if not gated and value < context.threshold("GP201", "vanish_below") * (1 - TOLERANCE):
        # ||dh_t/dh_(t-k)|| <= value^k: below 1e-3 after at most this many steps, whatever the inputs
        reach = math.log(1e-3) / math.log(value) if value > 0 else 0.0
        evidence["max_horizon"] = reach
        if reach < context.threshold("GP201", "min_memory_steps"):
            return context.finding(
                "GP201",
                f"sigma_max(W_hh){block} x gamma = {value:.3g} in {track}: a gradient falls below 1e-3 within "
                f"{reach:.1f} steps whatever the inputs, so the recurrence carries no memory",
                layer=track,
                evidence=evidence,
                fixes=(action(identity),),
            )
        return context.finding(
            "GP201",
            f"sigma_max(W_hh){block} x gamma = {value:.3f} < 1 in {track}: gradients vanish at least like {value:.2f}^k",
            layer=track,
            severity="info",
            evidence=evidence,
            fixes=(action(identity),),
        )
    limit = context.threshold("GP201", "gated_explode_above" if gated else "explode_above")
    if value > limit * (1 + TOLERANCE):
        return context.finding(
            "GP201",
            f"sigma_max(W_hh){block} x gamma = {value:.3f} > {limit:g} in {track}: gradients can explode",
            layer=track,
            evidence=evidence,
            fixes=(action(identity), action("clip-grad-norm-auto")),
        )
    return None
