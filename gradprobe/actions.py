"""Fixes as data: every remedy a finding can carry, with its safety, in one table.

A finding's ``fixes`` is a tuple of :class:`~gradprobe.findings.FixAction`
(an action id from :data:`ACTIONS`, its parameters, its safety); the ``fix``
text is rendered from them (:func:`render`), and :func:`gradprobe.fixes.apply`
dispatches on the action ids. Safety follows ruff's ``Applicability``:

``safe``
    Changes no model structure or weights, only a step's gradients: may run
    automatically (``attach(..., fix="auto")``).
``unsafe``
    Changes the model (weights or structure): only an explicit
    ``gradprobe.fixes.apply(model, findings)`` runs it.
``display-only``
    A change to the user's training code or data (learning rate, truncation
    window, input scaling): shown, never applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gradprobe.findings import FixAction

SAFETY = ("safe", "unsafe", "display-only")


@dataclass(frozen=True)
class ActionSpec:
    """How one action id is shown and how safe it is.

    Attributes:
        safety: ``safe``, ``unsafe`` or ``display-only``.
        template: ``str.format`` template over the action's parameters.
    """

    safety: str
    template: str


ACTIONS: dict[str, ActionSpec] = {
    # per-step, safe
    "clip-grad-norm": ActionSpec(
        "safe",
        "clip gradients by norm at {max_norm:.3g} (torch.nn.utils.clip_grad_norm_ after backward, or attach(..., fix='auto'))",
    ),
    "clip-grad-norm-auto": ActionSpec(
        "safe",
        "clip gradients by norm with a robust learned threshold (attach(..., fix='auto') or fixes.ClipGradNorm())",
    ),
    "skip-nonfinite": ActionSpec(
        "safe", "skip updates whose gradients are non-finite (attach(..., fix='auto') or fixes.NonFiniteGuard('skip'))"
    ),
    # structural, unsafe
    "orthogonal-recurrent": ActionSpec("unsafe", "orthogonal recurrent weights (fixes.reinit.orthogonal_recurrent_)"),
    "identity-recurrent": ActionSpec(
        "unsafe", "identity recurrent weights and zero biases, IRNN (fixes.reinit.identity_recurrent_)"
    ),
    "forget-bias": ActionSpec("unsafe", "forget-gate bias {value:g} (fixes.reinit.forget_bias_)"),
    "chrono-init": ActionSpec(
        "unsafe",
        "chrono init of the forget/input biases (fixes.reinit.chrono_init_(lstm, max_timescale={max_timescale}))",
    ),
    "xavier-input": ActionSpec("unsafe", "Xavier input weights (fixes.reinit.xavier_input_)"),
    "he-input": ActionSpec("unsafe", "He input weights (fixes.reinit.he_input_)"),
    "positive-bias": ActionSpec(
        "unsafe", "recurrent-layer biases {value:g} so that ReLU units start active (fixes.reinit.positive_bias_)"
    ),
    "residual-stack": ActionSpec(
        "unsafe",
        "residual connections across the stacked layers (fixes.residual_stack; fixes.apply(..., residual=True))",
    ),
    "lru-ring-init": ActionSpec(
        "unsafe",
        "LRU eigenvalues on the ring r_min={r_min:.4g} .. r_max={r_max:.4g} with input normalization "
        "sqrt(1 - |lambda|^2) (fixes.reinit.lru_ring_)",
    ),
    # changes to the user's code or data
    "decay-init": ActionSpec("display-only", "initialize the decays in their documented range: {documented}"),
    "bounded-decay": ActionSpec(
        "display-only",
        "parameterize the decay so that |a| < 1 always (LRU: exp(-exp(nu_log)); Mamba: exp(-softplus(dt) * exp(A_log)); "
        "RG-LRU: sigmoid(Lambda)^(c r_t))",
    ),
    "memory-for-length": ActionSpec(
        "display-only",
        "train on sequences about as long as the memory ({memory}), or start the decays shorter "
        "(time constants within ~{length} steps: |a| <= {decay:.4g})",
    ),
    "use-gated-cell": ActionSpec("display-only", "use a gated cell (LSTM or GRU)"),
    "leaky-relu-rnn": ActionSpec(
        "display-only",
        "a leaky ReLU, whose units cannot die: torch.nn.RNN has none; gradprobe.reference.RNN(..., nonlinearity='leaky_relu') "
        "takes the same arguments and state_dict, and the probe measures it like the built-ins",
    ),
    "lower-learning-rate": ActionSpec("display-only", "lower the learning rate about {factor:g}x"),
    "normalize-inputs": ActionSpec("display-only", "normalize or rescale the inputs"),
    "check-inputs": ActionSpec("display-only", "check the inputs and targets for NaN/Inf"),
    "shorter-truncation": ActionSpec(
        "display-only",
        "truncated BPTT over {window} steps (fixes.TruncatedBPTT({window})): the gradient signal reaches no further",
    ),
    "longer-truncation": ActionSpec("display-only", "lengthen the BPTT window to ~{window} steps"),
    "backward-before-step": ActionSpec(
        "display-only", "call loss.backward() before probe.step(), with parameters that require gradients"
    ),
}


def action(action_id: str, **params: Any) -> FixAction:
    """A :class:`FixAction` for a registered action id, with the registry's safety.

    Raises:
        KeyError: ``action_id`` is not in :data:`ACTIONS`.
    """
    spec = ACTIONS[action_id]
    return FixAction(action_id, dict(params), spec.safety)


def describe(fix: FixAction) -> str:
    """One fix as text (an unknown action id, e.g. from a newer log, shows as its id and parameters)."""
    spec = ACTIONS.get(fix.action)
    if spec is None:
        shown = ", ".join(f"{k}={v}" for k, v in fix.params.items())
        return f"{fix.action}({shown})" if shown else fix.action
    try:
        return spec.template.format(**fix.params)
    except (KeyError, ValueError, IndexError):
        return spec.template.split(" (")[0]


def render(fixes: tuple[FixAction, ...] | list[FixAction]) -> str | None:
    """The ``fix`` text of a finding: its actions joined with ``; or``, ``None`` when there are none."""
    if not fixes:
        return None
    return "; or ".join(describe(f) for f in fixes)


def truncation_length(horizon: float | None, seq_len: int, factor: float = 2.0, minimum: int = 8) -> int:
    """A BPTT window that keeps the gradient signal the model can carry.

    Gradients fade below the probe's ``epsilon`` after ``horizon`` steps, so
    windows longer than a small multiple of it cost compute without adding
    signal. Returns ``ceil(factor * horizon)`` clamped to ``[minimum, seq_len]``
    (``seq_len`` when the signal does not decay).
    """
    if horizon is None or not math.isfinite(horizon):
        return seq_len
    return int(max(min(minimum, seq_len), min(seq_len, math.ceil(factor * horizon))))
