"""Remedies for what the rules find.

Per-step fixes (safe; applied inside ``probe.step()`` with ``fix="auto"``):
:class:`ClipGradNorm`, :class:`ClipGradValue`, :class:`AdaptiveClip`,
:class:`NonFiniteGuard`.

Clipping of ``dL/dh_t`` through time (Graves 2013; unsafe, explicit):
:class:`HiddenGradClip`. The information-flow regularizer (Pascanu et al.
2013), a term added to the loss: :class:`FlowRegularizer`.

Structural fixes (unsafe: they change the model; applied only by an explicit
:func:`apply`): re-initialization (:mod:`.reinit`), residual stacking
(:func:`residual_stack`). Truncated BPTT is a change to the training loop:
:class:`TruncatedBPTT` with :func:`truncation_length`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from gradprobe.actions import action, truncation_length
from gradprobe.cell_modes import is_relu
from gradprobe.discovery import find_recurrent
from gradprobe.findings import Finding, FixAction
from gradprobe.fixes import reinit
from gradprobe.fixes.clipping import AdaptiveClip, ClipGradNorm, ClipGradValue
from gradprobe.fixes.flow import FlowRegularizer
from gradprobe.fixes.hidden_clip import HiddenGradClip
from gradprobe.fixes.nonfinite import NonFiniteGuard
from gradprobe.fixes.residual import ResidualRecurrentStack, residual_stack
from gradprobe.fixes.truncation import TruncatedBPTT, detach_state, length_from_profiles

_TRACK = re.compile(r"\.l\d+(_reverse)?$")


@dataclass
class AppliedFix:
    """What :func:`apply` changed.

    Attributes:
        code: The finding's rule code.
        layer: The module changed.
        action: What was done, in words.
        parameters: The parameters rewritten.
        action_id: The action id (:mod:`gradprobe.actions`).
    """

    code: str
    layer: str
    action: str
    parameters: list[str] = field(default_factory=list)
    action_id: str = ""
    safe: bool = False

    def __str__(self) -> str:
        return f"{self.code} {self.layer}: {self.action}"


def _module_name(layer: str | None) -> str | None:
    return None if layer is None else _TRACK.sub("", layer)


#: The unsafe actions :func:`apply` can run, and the part of a layer each one rewrites
#: (one rewrite per layer and part: chrono init wins over forget bias 1, found first).
TARGETS = {
    "chrono-init": "gates",
    "forget-bias": "gates",
    "orthogonal-recurrent": "recurrent",
    "identity-recurrent": "recurrent",
    "positive-bias": "bias",
    "xavier-input": "input",
    "he-input": "input",
    "residual-stack": "residual",
    "lru-ring-init": "recurrent",
}
_ORDER = {name: index for index, name in enumerate(TARGETS)}


def default_actions(finding: Finding, mode: str) -> tuple[FixAction, ...]:
    """The remedies for a finding that carries none as data (written by hand, or by a plugin), by code."""
    code = finding.code
    found: list[FixAction] = []
    if code in ("GP101", "GP201", "GP202") and mode == "LSTM":
        length = finding.evidence.get("dependency_length") or finding.evidence.get("seq_len")
        found.append(action("chrono-init", max_timescale=int(length)) if length else action("forget-bias", value=1.0))
    if code in ("GP101", "GP201"):
        found.append(action("identity-recurrent" if is_relu(mode) else "orthogonal-recurrent"))
    if code == "GP302":
        found.append(action("identity-recurrent"))
    if code in ("GP203", "GP301", "GP302"):
        found.append(action("he-input" if is_relu(mode) else "xavier-input"))
    if code == "GP101":
        found.append(action("residual-stack"))
    return tuple(found)


def apply(
    model: nn.Module,
    findings: Iterable[Finding],
    *,
    max_timescale: int | None = None,
    residual: bool = False,
) -> list[AppliedFix]:
    """Run the unsafe (structural) fixes the findings carry, on ``model`` in place.

    Dispatches on each finding's :attr:`~gradprobe.findings.Finding.fixes`
    action ids (see :mod:`gradprobe.actions`); a warning or error that
    carries none gets the defaults of its code (:func:`default_actions`).
    Safe fixes (clipping, skipping non-finite steps) belong in the loop
    (:func:`step_fixes`, or ``attach(..., fix="auto")``); display-only ones
    are changes to your code. Each part of a layer is rewritten once.

    Args:
        max_timescale: Overrides the chrono-init timescale of every LSTM.
        residual: Also run ``residual-stack``: a fused stack whose lower
            layers vanish is replaced by a :class:`ResidualRecurrentStack`
            (re-create the optimizer afterwards).

    Returns:
        One :class:`AppliedFix` per change, in order.
    """
    sites = {site.name: site for site in find_recurrent(model)}
    planned: list[tuple[str, Finding, FixAction]] = []
    for finding in findings:
        name = _module_name(finding.layer)
        site = sites.get(name or "")
        if site is None or (site.mode is None and site.adapter is None) or name is None:
            continue
        actions = finding.fixes or (default_actions(finding, site.mode or "") if finding.severity != "info" else ())
        planned += [(name, finding, fix) for fix in actions if fix.safety == "unsafe" and fix.action in TARGETS]
    planned.sort(key=lambda item: _ORDER[item[2].action])  # stable: chrono init before forget bias, whatever came first
    applied: list[AppliedFix] = []
    done: set[tuple[str, str]] = set()
    for name, finding, fix in planned:
        site = sites[name]
        target = TARGETS[fix.action]
        if (name, target) in done:
            continue
        if fix.action == "residual-stack" and not _residual_applies(residual, site.module, finding.layer):
            continue
        if fix.action in ("chrono-init", "forget-bias") and site.mode != "LSTM":
            continue
        done.add((name, target))
        applied.append(_run(model, name, site.module, finding.code, fix, max_timescale))
    return applied


def _residual_applies(residual: bool, module: nn.Module, layer: str | None) -> bool:
    return (
        residual
        and isinstance(module, nn.RNNBase)
        and module.num_layers > 1
        and not (layer or "").endswith(f".l{module.num_layers - 1}")
    )


def _run(
    model: nn.Module, name: str, module: nn.Module, code: str, fix: FixAction, max_timescale: int | None
) -> AppliedFix:
    kind = fix.action
    if kind == "chrono-init":
        horizon = int(max_timescale or fix.params.get("max_timescale") or 0)
        if horizon >= 3:
            return AppliedFix(
                code,
                name,
                f"chrono init of forget/input biases (T_max={horizon})",
                reinit.chrono_init_(module, horizon),
                kind,
            )
        return AppliedFix(code, name, "forget-gate bias 1", reinit.forget_bias_(module, 1.0), "forget-bias")
    if kind == "forget-bias":
        value = float(fix.params.get("value", 1.0))
        return AppliedFix(code, name, f"forget-gate bias {value:g}", reinit.forget_bias_(module, value), kind)
    if kind == "orthogonal-recurrent":
        return AppliedFix(code, name, "orthogonal recurrent weights", reinit.orthogonal_recurrent_(module), kind)
    if kind == "identity-recurrent":
        return AppliedFix(
            code, name, "identity recurrent weights, zero biases (IRNN)", reinit.identity_recurrent_(module), kind
        )
    if kind == "positive-bias":
        value = float(fix.params.get("value", 0.1))
        return AppliedFix(
            code, name, f"input biases {value:g}, recurrent biases 0", reinit.positive_bias_(module, value), kind
        )
    if kind == "lru-ring-init":
        r_min, r_max = float(fix.params.get("r_min", 0.9)), float(fix.params.get("r_max", 0.999))
        return AppliedFix(
            code, name, f"LRU ring {r_min:.4g}..{r_max:.4g}", reinit.lru_ring_(module, r_min, r_max), kind
        )
    if kind == "xavier-input":
        return AppliedFix(code, name, "Xavier input weights", reinit.xavier_input_(module), kind)
    if kind == "he-input":
        return AppliedFix(code, name, "He input weights", reinit.he_input_(module), kind)
    assert isinstance(module, nn.RNNBase)  # residual stacking is offered for fused stacks only
    _replace_submodule(model, name, residual_stack(module))
    return AppliedFix(code, name, "residual connections across stacked layers (re-create the optimizer)", [], kind)


def _replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not leaf or leaf not in parent._modules:
        raise ValueError(
            f"cannot replace {name!r}: the model itself is the recurrent module; use residual_stack() directly"
        )
    setattr(parent, leaf, new)


def step_fixes(findings: Iterable[Finding]) -> list[object]:
    """The safe per-step fixes the findings call for, to run in the loop.

    ``NonFiniteGuard`` for ``skip-nonfinite`` (GP103), ``ClipGradNorm`` for
    ``clip-grad-norm`` (with its threshold) or ``clip-grad-norm-auto``;
    findings without fixes as data fall back on their codes.
    """
    findings = list(findings)
    ids: dict[str, FixAction] = {}
    for f in findings:
        for fix in f.fixes or _default_step_actions(f):
            ids.setdefault(fix.action, fix)
    fixes: list[object] = []
    if "skip-nonfinite" in ids:
        fixes.append(NonFiniteGuard("skip"))
    if "clip-grad-norm" in ids:
        fixes.append(ClipGradNorm(max_norm=ids["clip-grad-norm"].params.get("max_norm")))
    elif "clip-grad-norm-auto" in ids:
        fixes.append(ClipGradNorm())
    return fixes


def _default_step_actions(finding: Finding) -> tuple[FixAction, ...]:
    if finding.code == "GP103":
        return (action("skip-nonfinite"),)
    if finding.code in ("GP102", "GP401"):
        threshold = finding.evidence.get("suggested_max_norm")
        return (action("clip-grad-norm", max_norm=threshold) if threshold else action("clip-grad-norm-auto"),)
    return ()


__all__ = [
    "AdaptiveClip",
    "AppliedFix",
    "ClipGradNorm",
    "ClipGradValue",
    "FlowRegularizer",
    "HiddenGradClip",
    "NonFiniteGuard",
    "ResidualRecurrentStack",
    "TruncatedBPTT",
    "apply",
    "detach_state",
    "length_from_profiles",
    "reinit",
    "residual_stack",
    "step_fixes",
    "truncation_length",
]
