"""GP001 not-measured: a recurrent layer was attached but no deep step could measure it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl, observes
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

RULE = Rule(
    code="GP001",
    name="not-measured",
    severity="warning",
    summary="A recurrent layer was attached but never measured: its health is unknown, not good",
    what_it_does=(
        "At close the probe lists every attached recurrent module (and every layer direction of it) that no deep "
        "step measured, with the reason: a TorchScript module (no hooks), hooks that never ran (unused, or inside "
        "a scripted or compiled parent, or a wrapper calling .forward() directly), calls made only with gradients "
        "disabled, or no call on a deep step. When measuring fails (the probe switches itself off) every attached "
        "layer gets one, with the error; when a rule fails on a layer, that layer gets one naming the rule. Each "
        "becomes a warning that fails whatever fail-on is, so Report.healthy is False, assert_healthy fails and "
        "gradprobe report says NOT MEASURED (exit 1) until the layer is measured or the code is allowed."
    ),
    why_bad="Silence about a layer that was never looked at reads as 'healthy'; a broken layer would pass.",
    known_problems="A module that is attached on purpose but unused in this run (a leftover layer) is reported too.",
    example="model.cell = torch.jit.script(LayerNormLSTMCell(32, 64))\ngradprobe.check(model, batch)",
    use_instead="gradprobe.check(eager_model, batch)    # script after checking, or check the eager twin",
    fix_safety="Display only: measure the eager module, call it with gradients, or allow GP001 for this layer.",
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
@observes("unmeasured", "error")
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    if event.get("kind") == "error":
        return _measuring_failed(event, context)
    if event.get("kind") != "unmeasured":
        return None
    layer = str(event.get("layer"))
    tracks = [str(t) for t in event.get("tracks") or [layer]]
    return [_finding(context, layer, tracks, str(event.get("reason")), event.get("step"))]


def _measuring_failed(event: dict[str, Any], context: RuleContext) -> RuleResult:
    """The probe switched itself off after an error: from then on no attached layer is measured."""
    where = f" in {event['where']}" if event.get("where") else ""
    reason = (
        f"measuring failed at step {event.get('step')}{where} ({event.get('message')}); the probe switched itself off"
    )
    layers = context.meta.get("layers")
    found = []
    for described in layers if isinstance(layers, list) else []:
        if not isinstance(described, dict):
            continue
        layer = str(described.get("name"))
        tracks = [str(t) for t in described.get("tracks") or [layer]]
        found.append(_finding(context, layer, tracks, reason, event.get("step")))
    return found or [_finding(context, None, [], reason, event.get("step"))]


def _finding(context: RuleContext, layer: str | None, tracks: list[str], reason: str, step: Any) -> Any:
    which = (
        "every attached layer"
        if layer is None
        else layer
        if tracks in ([layer], [])
        else f"{layer} ({', '.join(tracks)})"
    )
    return context.finding(
        "GP001",
        f"{which} was attached but not measured: {reason}",
        layer=layer,
        step=step,
        evidence={"reason": reason, "tracks": tracks},
    )
