"""The evidence that a short gradient horizon hurts (shared by GP101 and GP402).

A horizon is a measurement. It becomes a problem only with evidence:

``declared``
    The user declared the dependency length the task needs
    (``dependency_length=``), and the horizon is below it.
``structure``
    The loss reaches part of the sequence only through the recurrence, and
    there the gradient has faded below epsilon in every direction (a loss on
    the last steps of a long sequence: classification, the adding problem).
    A cause without a symptom: alone it is no evidence while the loss is
    improving (a forecaster whose loss covers its prediction window learns).
``stalled-loss``
    The loss has stayed near its starting value while the horizon is shorter
    than the sequence (symptom first, then cause).
``collapse``
    The horizon collapsed during training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gradprobe.rules.context import RuleContext
from gradprobe.rules.observations import TrackHistory


@dataclass
class VanishingEvidence:
    """What is known about one track's horizon, and the evidence that it hurts."""

    track: TrackHistory
    horizon: float
    seq_len: int
    rate: float | None
    need: int | None
    kinds: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    severe: bool = False

    @property
    def hurts(self) -> bool:
        return bool(self.kinds)

    @property
    def judged_length(self) -> int:
        """The length the horizon is compared with: the declared need, else the sequence seen."""
        return self.need or self.seq_len

    @property
    def severity(self) -> str:
        """info without evidence, error with two kinds of it (or a horizon far below a declared need), else warning."""
        if not self.hurts:
            return "info"
        return "error" if self.severe or len(self.kinds) >= 2 else "warning"

    def compared(self) -> str:
        """The horizon against the declared need, or the sequence length: ``< the 40 steps the task needs``."""
        if self.need is not None:
            return f"{'<' if self.horizon < self.need else '>='} the {self.need} steps the task needs"
        return f"over sequences of {self.seq_len}"

    def message(self, head: str, advice: str = "declare dependency_length= to judge it against the task") -> str:
        """``head`` with the evidence, or with the note that there is none."""
        if self.hurts:
            return f"{head}; evidence: {'; '.join(self.reasons)}"
        return f"{head}; no evidence that it limits learning ({advice})"

    def numbers_for(self, **extra: Any) -> dict[str, Any]:
        """The finding's evidence: the horizon, the lengths, ``extra``, the kinds of evidence and their numbers."""
        return {
            "horizon": round(self.horizon, 2),
            "seq_len": self.seq_len,
            "dependency_length": self.need,
            **extra,
            "probes": self.track.probes,
            "evidence": list(self.kinds),
            **self.numbers,
        }

    def first_step(self) -> int | None:
        """Since when: the first probe from which the horizon stayed short of what is judged."""
        return self.track.first_below(self.judged_length) if self.judged_length else None


def declared_need(context: RuleContext) -> int | None:
    """The dependency length the task needs, from ``attach``/``check`` or ``[tool.gradprobe]``."""
    settings = context.meta.get("settings") or {}
    for key in ("dependency_length", "seq_len"):  # seq_len: the name before 0.2
        value = settings.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return int(value)
    return context.config.dependency_length


#: GP101's thresholds and their defaults.
VANISHING_THRESHOLDS: dict[str, float] = {
    "min_horizon_fraction": 1.0,
    "error_horizon_fraction": 0.25,
    "min_starved_fraction": 0.25,
    "stall_min_steps": 100,
    "min_improvement": 0.1,
    "collapse_fraction": 0.25,
}


def vanishing_threshold(context: RuleContext, key: str) -> float:
    """A threshold of the vanishing evidence: GP101's as configured, else the default in
    :data:`VANISHING_THRESHOLDS` (the table GP101 registers; GP402 weighs the same evidence, and reads it
    here whether or not GP101 is installed)."""
    return float(context.config.thresholds.get("GP101", {}).get(key, VANISHING_THRESHOLDS[key]))


def vanishing_evidence(context: RuleContext, track: TrackHistory) -> VanishingEvidence:
    """Collect the evidence (see the module doc) for one track, with GP101's thresholds."""
    horizon, seq_len = track.horizon(), track.max_seq_len
    found = VanishingEvidence(track, horizon, seq_len, track.rate(), declared_need(context))
    if math.isinf(horizon):
        return found

    def threshold(key: str) -> float:
        return vanishing_threshold(context, key)

    if found.need is not None:
        if horizon >= threshold("min_horizon_fraction") * found.need:
            return found  # the declared need is met: nothing else can make this horizon the problem
        found.kinds.append("declared")
        found.reasons.append(f"the task needs {found.need} steps (declared)")
        found.severe = horizon < threshold("error_horizon_fraction") * found.need
    starved = context.run.starved(track)
    if (
        starved is not None and horizon < seq_len
    ):  # a horizon past the sequence: the recurrence is not what starves them
        count, length = starved
        found.numbers["starved_steps"] = count
        if length and count / length >= threshold("min_starved_fraction"):
            found.kinds.append("structure")
            found.reasons.append(
                f"{count} of {length} steps get < {track.epsilon:g} of the gradient: the loss reaches them only through the recurrence"
            )
    loss = context.run.loss
    if found.kinds == ["structure"] and _improving(context, threshold("min_improvement")):
        found.kinds.clear()
        gained = loss.improvement() or 0.0
        found.reasons.clear()
        found.numbers.update(initial_loss=loss.initial, latest_loss=loss.latest, improvement=gained)
    if horizon < seq_len and loss.stalled(
        int(threshold("stall_min_steps")), threshold("min_improvement"), context.run.signals.loss_rise
    ):
        found.kinds.append("stalled-loss")
        gained = loss.improvement() or 0.0
        found.reasons.append(
            f"the loss stalled near its start ({loss.initial:.4g} -> {loss.latest:.4g}, {gained:+.1%})"
        )
        found.numbers.update(initial_loss=loss.initial, latest_loss=loss.latest)
    if track.probes > 2 * len(track.early) - 1 and len(track.early) >= 2:
        early = track.early_horizon()
        if horizon < seq_len and horizon < threshold("collapse_fraction") * early:
            found.kinds.append("collapse")
            shown = "no decay" if math.isinf(early) else f"{early:.0f} steps"
            found.reasons.append(f"the horizon collapsed during training (from {shown} to {horizon:.0f})")
            found.numbers["early_horizon"] = None if math.isinf(early) else early
    return found


def short_horizons(context: RuleContext, linear_recurrences: bool) -> list[VanishingEvidence]:
    """The evidence of every track worth a finding: its horizon is finite and shorter than what is judged, or it
    hurts. ``linear_recurrences`` picks the layers an adapter reads (GP501) or the others (GP101)."""
    found = []
    for track in context.run.tracks.values():
        if context.is_linear_recurrence(track.module) != linear_recurrences:
            continue
        evidence = vanishing_evidence(context, track)
        if math.isinf(evidence.horizon) or (not evidence.hurts and evidence.horizon >= evidence.judged_length):
            continue
        found.append(evidence)
    return found


def _improving(context: RuleContext, min_improvement: float) -> bool:
    """The loss is learning: at least ``min_improvement`` of its start gone, still falling late in the run (a
    quarter of that between its third and last quarter, once there are enough blocks), not diverging or non-finite."""
    loss = context.run.loss
    gained = loss.improvement()
    if gained is None or gained < min_improvement or loss.nonfinite:
        return False
    late = loss.late_improvement()
    if late is not None and late < min_improvement / 4:
        return False
    return loss.divergence(context.run.signals.loss_rise) is None


#: The shared signals the exploding evidence (spikes and whether they hurt) reads: GP102's and GP401's.
EXPLODING_SIGNALS = (
    "spike_factor",
    "spike_window",
    "min_history",
    "min_spikes",
    "extreme_factor",
    "loss_rise",
    "min_pinned_fraction",
)


@dataclass
class SpikeJudgement:
    """Whether GP102's spikes hurt this run, and why."""

    harmful: bool
    reason: str


def spike_judgement(context: RuleContext) -> SpikeJudgement:
    """Spikes hurt when the loss diverges or turns non-finite, when one is extreme
    (over GP102's extreme_factor x the median), or when they repeat and no loss
    was recorded to show they do not. Spikes while the loss keeps falling are
    what small-batch training looks like (info)."""
    run = context.run
    norms, loss = run.norms, run.loss
    if not norms.spikes:
        return SpikeJudgement(False, "")
    if loss.nonfinite:
        return SpikeJudgement(True, "and the loss turned non-finite")
    if loss.divergence(context.run.signals.loss_rise) is not None:
        return SpikeJudgement(True, "and the loss diverges")
    if norms.max_spike_ratio >= context.run.signals.extreme_factor:
        return SpikeJudgement(True, f"one over {context.run.signals.extreme_factor:g}x the median")
    if loss.finite == 0 and norms.spikes >= context.run.signals.min_spikes:
        return SpikeJudgement(True, "repeated, with no loss recorded to show they are harmless")
    return SpikeJudgement(False, "while the loss keeps improving" if loss.finite else "isolated")
