"""GP502 memory-beyond-training: most channels of a linear recurrence remember far longer than its training sequences."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradprobe.actions import action
from gradprobe.events import finite_number
from gradprobe.findings import RuleResult
from gradprobe.hookspecs import hookimpl, observes
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext

RULE = Rule(
    code="GP502",
    name="memory-beyond-training",
    severity="warning",
    raises=("info", "warning"),
    summary="Most channels of a linear recurrence remember far beyond the training length: it cannot learn to forget",
    thresholds={"length_factor": 10.0, "min_probes": 2},
    what_it_does=(
        "Reads the per-channel time constants tau = -1/mean ln|a_t| of a diagonal linear recurrence (its adapter "
        "computes the decays a_t on deep steps) and compares their median with the length of the sequences it is "
        "trained on. When the median is over length_factor x the training length on min_probes deep probes in a "
        "row (the latest included), it is a warning: most of the state never decays within a training sequence. "
        "On fewer probes (gradprobe.check) it is info."
    ),
    why_bad=(
        "A channel whose memory is much longer than any training sequence never sees its state decay, so the loss "
        "gives it no reason to learn to forget: on longer inputs at inference its state keeps accumulating and the "
        "model degrades past the training length (Stuffed Mamba, 2025; DeciMamba, ICLR 2025: the effective "
        "receptive field is capped by the training length)."
    ),
    known_problems=(
        "A model trained on short chunks of a long stream whose state is carried across chunks (truncated BPTT) "
        "sees longer effective sequences than one call shows: raise length_factor or ignore the rule."
    ),
    example="lru = gradprobe.reference.LRU(8, 64, r_min=0.999, r_max=0.9999)   # tau ~ 1,000-10,000, trained on T=32",
    use_instead="lru = gradprobe.reference.LRU(8, 64, r_min=0.9, r_max=0.99)   # or train on longer sequences",
    fix_safety="Both remedies are changes to your code or data.",
    references="Orvieto et al. 2023; Chen et al. 2025 (Stuffed Mamba); Ben-Kish et al. 2025 (DeciMamba).",
)


@dataclass
class LayerMemory:
    kind: str = ""
    step: int | None = None
    seq_len: int = 0
    median_tau: float = 0.0
    probes: int = 0
    streak: int = 0  # deep probes in a row over the limit, the latest included
    over_since: int | None = None


@dataclass
class State:
    layers: dict[str, LayerMemory] = field(default_factory=dict)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


def median_time_constant(event: dict[str, Any]) -> float | None:
    """The 50th percentile of a ``recurrence`` event's time constants (``inf`` allowed), or ``None``."""
    taus = event.get("time_constants")
    if not isinstance(taus, list) or len(taus) != 11:
        return None
    value = taus[5]
    if value in ("inf", math.inf):
        return math.inf
    return finite_number(value)


@hookimpl
@observes("recurrence", having="layer")
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> RuleResult:
    if event.get("layer") is None:
        return None
    layers, name = context.state("GP502", State).layers, str(event["layer"])
    entry = layers.setdefault(name, LayerMemory())
    median, seq_len = median_time_constant(event), int(event.get("seq_len") or 0)
    if median is None or seq_len <= 0:
        return None
    entry.kind, entry.step, entry.seq_len, entry.median_tau = (
        str(event.get("recurrence") or ""),
        event.get("step"),
        seq_len,
        median,
    )
    entry.probes += 1
    over = median > context.threshold("GP502", "length_factor") * seq_len
    entry.streak = entry.streak + 1 if over else 0
    entry.over_since = (entry.step if entry.over_since is None else entry.over_since) if over else None
    return None


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    found = []
    factor = context.threshold("GP502", "length_factor")
    for name, entry in context.state("GP502", State).layers.items():
        if entry.streak == 0:
            continue
        persistent = entry.streak >= context.threshold("GP502", "min_probes")
        shown = (
            "do not decay at all"
            if math.isinf(entry.median_tau)
            else f"remember over {entry.median_tau:.0f} steps (median time constant)"
        )
        length = max(int(entry.seq_len), 1)
        message = (
            f"half the channels of {name} ({entry.kind or 'linear recurrence'}) {shown}, beyond {factor:g}x the "
            f"{entry.seq_len}-step sequences it trains on"
            + (f", on {entry.streak} deep probes in a row" if persistent else "; one deep probe so far")
            + ": those channels never decay within a training sequence and cannot learn to forget"
        )
        found.append(
            context.finding(
                "GP502",
                message,
                layer=name,
                step=entry.step,
                severity="warning" if persistent else "info",
                evidence={
                    "median_time_constant": None if math.isinf(entry.median_tau) else entry.median_tau,
                    "seq_len": entry.seq_len,
                    "length_factor": factor,
                    "probes_in_a_row": entry.streak,
                    "recurrence": entry.kind,
                },
                fixes=(
                    action(
                        "memory-for-length",
                        memory="no decay" if math.isinf(entry.median_tau) else f"{entry.median_tau:.0f} steps",
                        length=length,
                        decay=math.exp(-1.0 / length),
                    ),
                ),
                first_step=entry.over_since,
            )
        )
    return found
