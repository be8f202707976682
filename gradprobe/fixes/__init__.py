"""Remedies for what the rules find.

Per-step fixes (safe; applied inside ``probe.step()`` with ``fix="auto"``):
:class:`ClipGradNorm`, :class:`ClipGradValue`, :class:`AdaptiveClip`,
:class:`NonFiniteGuard`.

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

from gradprobe.discovery import find_recurrent
from gradprobe.findings import Finding
from gradprobe.fixes import reinit
from gradprobe.fixes.clipping import AdaptiveClip, ClipGradNorm, ClipGradValue
from gradprobe.fixes.nonfinite import NonFiniteGuard
from gradprobe.fixes.residual import ResidualRecurrentStack, residual_stack
from gradprobe.fixes.truncation import TruncatedBPTT, detach_state, length_from_profiles, truncation_length

_TRACK = re.compile(r"\.l\d+(_reverse)?$")


@dataclass
class AppliedFix:
    """What :func:`apply` changed."""

    code: str
    layer: str
    action: str
    parameters: list[str] = field(default_factory=list)
    safe: bool = False

    def __str__(self) -> str:
        return f"{self.code} {self.layer}: {self.action}"


def _module_name(layer: str | None) -> str | None:
    return None if layer is None else _TRACK.sub("", layer)


def apply(
    model: nn.Module,
    findings: Iterable[Finding],
    *,
    max_timescale: int | None = None,
    residual: bool = False,
) -> list[AppliedFix]:
    """Apply the structural remedies for ``findings`` to ``model`` in place.

    Re-initializes the flagged layers: orthogonal recurrent weights (tanh RNN,
    GRU, LSTM) or identity/IRNN (ReLU RNN) for GP101/GP201/GP302; effective
    forget bias 1, or chrono init when ``max_timescale`` (or the sequence
    length in a GP101 finding) is known, for GP101/GP202 on LSTMs; Xavier
    (or He for ReLU) input weights for GP203/GP301. With ``residual=True``, a
    fused stack whose lower layers vanish (GP101) is replaced by a
    :class:`ResidualRecurrentStack`, so re-create the optimizer afterwards.
    Per-step problems (GP102/GP103/GP401) need :class:`ClipGradNorm` or
    :class:`NonFiniteGuard` in the loop (or ``attach(..., fix="auto")``).

    Returns:
        One :class:`AppliedFix` per change, in order.
    """
    sites = {site.name: site for site in find_recurrent(model)}
    findings = list(findings)
    applied: list[AppliedFix] = []
    done: set[tuple[str, str]] = set()

    def once(key: tuple[str, str]) -> bool:
        if key in done:
            return False
        done.add(key)
        return True

    timescales = {_module_name(f.layer): int(f.evidence["seq_len"]) for f in findings if f.code == "GP101" and f.evidence.get("seq_len")}
    for finding in findings:
        name = _module_name(finding.layer)
        site = sites.get(name or "")
        if site is None or site.mode is None:
            continue
        module, mode = site.module, site.mode
        code = finding.code
        if code in ("GP101", "GP201", "GP202") and mode == "LSTM" and once((name, "gates")):
            horizon = max_timescale or timescales.get(name)
            if horizon and horizon >= 3:
                changed = reinit.chrono_init_(module, horizon)
                applied.append(AppliedFix(code, name, f"chrono init of forget/input biases (T_max={horizon})", changed))
            else:
                applied.append(AppliedFix(code, name, "forget-gate bias 1", reinit.forget_bias_(module, 1.0)))
        if code in ("GP101", "GP201") and once((name, "recurrent")):
            if mode == "RNN_RELU":
                applied.append(AppliedFix(code, name, "identity recurrent weights, zero biases (IRNN)", reinit.identity_recurrent_(module)))
            else:
                applied.append(AppliedFix(code, name, "orthogonal recurrent weights", reinit.orthogonal_recurrent_(module)))
        if code == "GP302" and once((name, "recurrent")):
            applied.append(AppliedFix(code, name, "identity recurrent weights, zero biases (IRNN)", reinit.identity_recurrent_(module)))
        if code in ("GP203", "GP301", "GP302") and once((name, "input")):
            if mode == "RNN_RELU":
                applied.append(AppliedFix(code, name, "He input weights", reinit.he_input_(module)))
            else:
                applied.append(AppliedFix(code, name, "Xavier input weights", reinit.xavier_input_(module)))
        if (
            residual
            and code == "GP101"
            and isinstance(module, nn.RNNBase)
            and module.num_layers > 1
            and not (finding.layer or "").endswith(f".l{module.num_layers - 1}")
            and once((name, "residual"))
        ):
            _replace_submodule(model, name, residual_stack(module))
            applied.append(AppliedFix(code, name, "residual connections across stacked layers (re-create the optimizer)"))
    return applied


def _replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not leaf or leaf not in parent._modules:
        raise ValueError(f"cannot replace {name!r}: the model itself is the recurrent module; use residual_stack() directly")
    setattr(parent, leaf, new)


def step_fixes(findings: Iterable[Finding]) -> list[object]:
    """The per-step fixes the findings call for: ``NonFiniteGuard`` for GP103, ``ClipGradNorm`` for GP102/GP401."""
    codes = {f.code for f in findings}
    fixes: list[object] = []
    if "GP103" in codes:
        fixes.append(NonFiniteGuard("skip"))
    if codes & {"GP102", "GP401"}:
        threshold = next((f.evidence.get("suggested_max_norm") for f in findings if f.code == "GP401"), None)
        fixes.append(ClipGradNorm(max_norm=threshold))
    return fixes


__all__ = [
    "AdaptiveClip",
    "AppliedFix",
    "ClipGradNorm",
    "ClipGradValue",
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
