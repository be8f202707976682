"""GP001 not-measured: a recurrent layer was attached but no deep step could measure it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl, observes
from gradprobe.rules.context import RuleContext
from gradprobe.rules.registry import Rule

RULE = Rule(
    code="GP001",
    name="not-measured",
    severity="warning",
    summary="A recurrent layer was attached but never measured: its health is unknown, not good",
    what_it_does=(
        "At close the probe lists every attached recurrent module (and every layer direction of it) that no deep "
        "step measured, with the reason: a TorchScript module (no hooks), hooks that never ran (unused, or inside "
        "a scripted or compiled parent), calls made only with gradients disabled, or no call on a deep step. Each "
        "becomes a warning, so Report.healthy is False and assert_healthy fails until the layer is measured or the "
        "code is allowed."
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
@observes("unmeasured")
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    if event.get("kind") != "unmeasured":
        return None
    layer = str(event.get("layer"))
    tracks = event.get("tracks") or [layer]
    which = layer if tracks == [layer] else f"{layer} ({', '.join(tracks)})"
    return [
        context.finding(
            "GP001",
            f"{which} was attached but not measured: {event.get('reason')}",
            layer=layer,
            step=event.get("step"),
            evidence={"reason": event.get("reason"), "tracks": list(tracks)},
        )
    ]
