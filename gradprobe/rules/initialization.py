"""GP2xx initialization: recurrent spectrum (GP201), forget-gate bias (GP202), input-weight scale (GP203).

Static rules: they read the parameters of each recurrent layer and direction,
no data needed (``gradprobe.lint(model)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from gradprobe.discovery import RecurrentSite, gate_count
from gradprobe.findings import Finding
from gradprobe.fixes.reinit import xavier_std
from gradprobe.hookspecs import hookimpl
from gradprobe.rules.context import RuleContext
from gradprobe.rules.registry import Rule

GP201 = Rule(
    code="GP201",
    name="recurrent-spectrum",
    severity="warning",
    summary="sigma_max(W_hh) * gamma far from 1 (Pascanu's condition)",
    thresholds={"vanish_below": 1.0, "explode_above": 2.0, "gated_explode_above": 4.0},
    what_it_does=(
        "Computes the largest singular value of each recurrent weight (the candidate block for LSTM/GRU) times "
        "gamma, the largest slope of the activation (1 for tanh and ReLU). Below vanish_below, vanishing is "
        "guaranteed (Pascanu et al. 2013); above explode_above, gradients can explode. Gated cells scale the "
        "candidate path by their gates (and keep a linear memory path), so they are judged against "
        "gated_explode_above and never for vanishing."
    ),
    why_bad="||dh_t/dh_{t-1}|| <= gamma * sigma_max(W_hh): the product over T steps shrinks or grows like (gamma sigma)^T.",
    example="nn.init.normal_(rnn.weight_hh_l0, std=0.01)   # sigma_max ~ 0.2",
    use_instead="gradprobe.fixes.reinit.orthogonal_recurrent_(rnn)   # sigma_max = 1",
    static=True,
)

GP202 = Rule(
    code="GP202",
    name="forget-gate-bias",
    severity="warning",
    summary="LSTM forget-gate bias <= 0 (memory decays from the start)",
    thresholds={"warn_below": -0.5, "error_below": -2.0},
    what_it_does=(
        "Averages the effective forget-gate bias b_if + b_hf of each LSTM layer. <= 0 is reported as info (torch's "
        "default init), below warn_below as a warning and below error_below as an error."
    ),
    why_bad="With f_t = sigmoid(b_f + ...) near or below 0.5 the cell state halves every step: dL/dc_{t-k} ~ 0.5^k.",
    example="lstm = nn.LSTM(32, 64)   # forget bias ~ U(-1/8, 1/8) summed twice",
    use_instead="gradprobe.fixes.reinit.forget_bias_(lstm, 1.0)   # or chrono_init_(lstm, max_timescale=T)",
    static=True,
)

GP203 = Rule(
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
    static=True,
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    for rule in (GP201, GP202, GP203):
        register(rule)


def _directions(site: RecurrentSite) -> Iterator[tuple[str, dict[str, Tensor]]]:
    """``(track name, {kind: parameter})`` for every layer direction of a site."""
    module = site.module
    if site.kind == "cell":
        yield site.name, {k: getattr(module, k) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if getattr(module, k, None) is not None}
        return
    for index, track in enumerate(site.tracks):
        layer, direction = divmod(index, 2 if module.bidirectional else 1)
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        params = {}
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            value = getattr(module, kind + suffix, None)
            if value is not None:
                params[kind] = value
        yield track, params


@hookimpl
def gradprobe_lint(model: nn.Module, context: RuleContext) -> Iterable[Finding] | None:
    found: list[Finding | None] = []
    for site in context.sites:
        if site.mode is None:
            continue
        for track, params in _directions(site):
            with torch.no_grad():
                found.append(_spectrum(context, site, track, params))
                found.append(_forget_bias(context, site, track, params))
                found.extend(_input_scale(context, site, track, params))
    return found


def _candidate_block(mode: str, weight_hh: Tensor) -> Tensor:
    if mode not in ("LSTM", "GRU"):
        return weight_hh
    return weight_hh.chunk(gate_count(mode), dim=0)[2]  # g (LSTM) or n (GRU)


def _spectrum(context: RuleContext, site: RecurrentSite, track: str, params: dict[str, Tensor]) -> Finding | None:
    mode = site.mode or ""
    weight = _candidate_block(mode, params["weight_hh"]).detach().double()
    sigma = float(torch.linalg.matrix_norm(weight, ord=2))
    gamma = 1.0  # max slope of tanh and of ReLU
    value = sigma * gamma
    gated = mode in ("LSTM", "GRU")
    evidence = {"sigma_max": sigma, "gamma": gamma, "product": value}
    block = " (candidate block)" if gated else ""
    if not gated and value < context.threshold("GP201", "vanish_below"):
        return context.finding(
            "GP201",
            f"sigma_max(W_hh){block} x gamma = {value:.3f} < 1 in {track}: gradients vanish at least like {value:.2f}^k",
            layer=track,
            evidence=evidence,
            fix="orthogonal recurrent init (fixes.reinit.orthogonal_recurrent_), identity for ReLU (identity_recurrent_)",
        )
    limit = context.threshold("GP201", "gated_explode_above" if gated else "explode_above")
    if value > limit:
        return context.finding(
            "GP201",
            f"sigma_max(W_hh){block} x gamma = {value:.3f} > {limit:g} in {track}: gradients can explode",
            layer=track,
            evidence=evidence,
            fix="orthogonal recurrent init (fixes.reinit.orthogonal_recurrent_) and clip gradients by norm",
        )
    return None


def _forget_bias(context: RuleContext, site: RecurrentSite, track: str, params: dict[str, Tensor]) -> Finding | None:
    if site.mode != "LSTM":
        return None
    hidden = params["weight_hh"].shape[0] // 4
    parts = [params[k][hidden : 2 * hidden] for k in ("bias_ih", "bias_hh") if k in params]
    if not parts:
        return context.finding(
            "GP202",
            f"{track} has no biases: the forget gate cannot default to remembering",
            layer=track,
            severity="info",
            evidence={"forget_bias": None},
            fix="use bias=True and set the forget bias to 1 (fixes.reinit.forget_bias_)",
        )
    bias = float(sum(p.detach().double() for p in parts).mean())
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
        fix="forget-gate bias 1 (fixes.reinit.forget_bias_) or chrono init for long sequences (fixes.reinit.chrono_init_)",
    )


def _input_scale(context: RuleContext, site: RecurrentSite, track: str, params: dict[str, Tensor]) -> list[Finding | None]:
    weight = params["weight_ih"].detach().double()
    mode = site.mode or ""
    count = gate_count(mode)
    fan_out, fan_in = weight.shape[0] // count, weight.shape[1]
    relu = mode == "RNN_RELU"
    reference = math.sqrt(2.0 / fan_in) if relu else xavier_std(fan_in, fan_out)
    scheme = "He" if relu else "Xavier"
    stds = [float(block.std()) for block in weight.chunk(count, dim=0)]
    ratio = max(stds) / reference
    low_ratio = min(stds) / reference
    evidence = {"std": max(stds), "reference_std": reference, "ratio": ratio, "scheme": scheme}
    if ratio > context.threshold("GP203", "max_ratio"):
        return [
            context.finding(
                "GP203",
                f"input weight std {max(stds):.3g} is {ratio:.1f}x {scheme}'s {reference:.3g} in {track}: pre-activations saturate",
                layer=track,
                evidence=evidence,
                fix=f"{scheme} input init (fixes.reinit.{'he' if relu else 'xavier'}_input_)",
            )
        ]
    if low_ratio < context.threshold("GP203", "min_ratio"):
        return [
            context.finding(
                "GP203",
                f"input weight std {min(stds):.3g} is {low_ratio:.2f}x {scheme}'s {reference:.3g} in {track}: input barely reaches the state",
                layer=track,
                evidence={**evidence, "std": min(stds), "ratio": low_ratio},
                fix=f"{scheme} input init (fixes.reinit.{'he' if relu else 'xavier'}_input_)",
            )
        ]
    return []


