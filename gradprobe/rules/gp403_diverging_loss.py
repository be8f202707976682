"""GP403 diverging-loss: the loss climbs away from its best level, or turns non-finite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradprobe.actions import action
from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

RULE = Rule(
    code="GP403",
    name="diverging-loss",
    severity="warning",
    raises=("warning", "error"),
    summary="Loss diverging (rising above its best and its start) or non-finite",
    thresholds={"error_ratio": 2.0},
    signals=("loss_rise",),
    what_it_does=(
        "Follows the loss passed to probe.step(loss): the median of the first 20 steps (start), of the last 20 "
        "(now), and the lowest median of a 20-step block (best). The loss diverges when now exceeds best by more "
        "than loss_rise x |best| (a shared signal) and is above the start: a warning, an error once now is over error_ratio x the start. "
        "Any non-finite loss is an error, with the first step and the count. The message carries the gradient "
        "evidence (largest norm, spikes) and learning-rate advice."
    ),
    why_bad="A learning rate too large for the curvature makes each update overshoot: the loss climbs, then overflows.",
    known_problems="Needs the loss: probe.step(loss). A loss that is meant to rise (an adversarial term) should be ignored.",
    example="opt = torch.optim.SGD(model.parameters(), lr=20)   # a tanh RNN language model, no clipping",
    use_instead="opt = torch.optim.SGD(model.parameters(), lr=1)\ntorch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)",
    fix_safety="Display only (the learning rate is yours); clipping and skipping non-finite steps are safe.",
    references="Goodfellow, Bengio, Courville 2016, 8.2; AUTOTRAINER (Zhang et al. 2021).",
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    loss, norms = context.run.loss, context.run.norms
    gradients = (
        f"largest gradient norm {norms.maximum:.3g} (median {norms.median:.3g})"
        if norms.maximum is not None and norms.median
        else ""
    )
    if norms.spikes:
        gradients += f", {norms.spikes} spikes"
    evidence: dict[str, Any] = {
        "initial_loss": loss.initial,
        "best_loss": loss.best,
        "best_step": loss.best_step,
        "latest_loss": loss.latest,
        "nonfinite_losses": loss.nonfinite,
        "first_nonfinite_step": loss.first_nonfinite_step,
        "max_grad_norm": norms.maximum,
        "spikes": norms.spikes,
    }
    automatic = context.run.clipping.auto  # fix="auto" clips and guards already: recommend what it cannot do
    fixes = (action("lower-learning-rate", factor=10),) + (() if automatic else (action("clip-grad-norm-auto"),))
    if loss.nonfinite:
        total = loss.nonfinite + loss.finite
        return [
            context.finding(
                "GP403",
                f"loss non-finite from step {loss.first_nonfinite_step} ({loss.nonfinite} of {total} steps)"
                + (f"; {gradients}" if gradients else ""),
                step=loss.first_nonfinite_step,
                severity="error",
                evidence=evidence,
                fixes=fixes if automatic else (*fixes, action("skip-nonfinite")),
            )
        ]
    divergence = context.run.loss_divergence()
    if divergence is None:
        return None
    initial, latest = divergence["initial"], divergence["latest"]
    severe = initial > 0 and latest > context.threshold("GP403", "error_ratio") * initial
    return [
        context.finding(
            "GP403",
            f"loss diverging since step {divergence['best_step']}: {initial:.4g} at the start, best {divergence['best']:.4g}, "
            f"now {latest:.4g}" + (f"; {gradients}" if gradients else ""),
            step=divergence["best_step"],
            severity="error" if severe else "warning",
            evidence=evidence,
            fixes=fixes,
        )
    ]
