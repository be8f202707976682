"""What every rule may read: running observations of one run, kept by the rule engine.

The engine feeds each event to :class:`Observations` *before* any rule sees
it, so rules never depend on one another's state or on pluggy's call order.
Everything here runs in constant memory in the length of the run.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from gradprobe.config import SIGNALS, Config
from gradprobe.events import finite_number, number

#: Losses at the start of a run that define its starting level.
FIRST_LOSSES = 20
#: Losses at the end of what was seen that define its current level.
RECENT_LOSSES = 20
#: Losses at the very start whose median is the level before training moved it (a run that blows up
#: in its first steps has no better block); a median, so one low first batch moves nothing.
START_LOSSES = 3
#: How many standard errors a climb of the loss level must stand above the noise to be a divergence. On a
#: flat loss with i.i.d. log-normal batch noise (60 steps, 1000 seeds) 2.75 called 0.4% (sd 0.6) and 0.6%
#: (sd 0.3) of the runs diverging; 3.0 called 0.2-0.3% but missed the word LM's tanh RNN at lr 20, whose
#: loss jumps from 5.9 to ~10 in its first steps and stays there (z = 2.9 after 400 steps).
CLIMB_Z = 2.75
#: Block medians kept for the trend over the run (neighbours merged beyond it).
KEPT_BLOCKS = 256
#: Blocks before the late trend of a run is judged.
LATE_BLOCKS = 4
#: Deep probes per track kept from the start, and the most recent ones.
KEPT_PROBES = 5
#: Norms of the first steps whose loss was not rising, kept as the run's healthy gradient scale.
HEALTHY_NORMS = 20
#: A loss over this multiple of the start level is rising: its step's norm is not a healthy one.
RISING = 1.5


def _median(values: Any) -> float | None:
    data = list(values)
    return statistics.median(data) if data else None


@dataclass
class LossTrend:
    """The loss over training: starting and current level, best level, non-finite values.

    Levels are medians over :data:`FIRST_LOSSES` / :data:`RECENT_LOSSES` steps,
    so one noisy batch moves nothing. The best level is the lowest median of
    consecutive blocks of ``RECENT_LOSSES`` steps.
    """

    first: list[float] = field(default_factory=list)
    start: float | None = None
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_LOSSES))
    finite: int = 0
    nonfinite: int = 0
    first_nonfinite_step: int | None = None
    first_step: int | None = None
    last_step: int | None = None
    best: float | None = None
    best_step: int | None = None
    #: Block medians in order, pairs merged (and the block doubled) past :data:`KEPT_BLOCKS`: constant memory.
    levels: list[float] = field(default_factory=list)
    _block: list[float] = field(default_factory=list)

    def add(self, step: int | None, loss: float | None) -> None:
        if loss is None:
            return
        self.last_step = step
        if not math.isfinite(loss):
            self.nonfinite += 1
            if self.first_nonfinite_step is None:
                self.first_nonfinite_step = step
            return
        self.finite += 1
        if self.start is None:
            self.start, self.first_step = loss, step
        if len(self.first) < FIRST_LOSSES:
            self.first.append(loss)
        self.recent.append(loss)
        self._block.append(loss)
        if len(self._block) == RECENT_LOSSES:
            level = statistics.median(self._block)
            if self.best is None or level < self.best:
                self.best, self.best_step = level, step
            self._block = []
            self._add_level(level)

    def _add_level(self, level: float) -> None:
        """Keep ``level`` in :attr:`levels`; past :data:`KEPT_BLOCKS` levels, merge neighbours (the mean of two medians)."""
        self.levels.append(level)
        if len(self.levels) > KEPT_BLOCKS:
            pairs = self.levels
            self.levels = [(pairs[i] + pairs[i + 1]) / 2 for i in range(0, len(pairs) - 1, 2)] + pairs[
                len(pairs) & ~1 :
            ]

    def late_improvement(self) -> float | None:
        """The share of the loss gone between the third and the last quarter of the run (block medians).

        ``None`` before :data:`LATE_BLOCKS` blocks. A run still learning keeps
        improving there; a loss stuck at a trivial baseline after a first fall
        (the mean predictor) does not.
        """
        levels = self.levels
        n = len(levels)
        if n < LATE_BLOCKS:
            return None
        third = statistics.median(levels[n // 2 : (3 * n) // 4])
        last = statistics.median(levels[(3 * n) // 4 :])
        return (third - last) / abs(third) if third else None

    @property
    def initial(self) -> float | None:
        """Median of the first losses."""
        return _median(self.first)

    @property
    def latest(self) -> float | None:
        """Median of the most recent losses."""
        return _median(self.recent)

    def improvement(self) -> float | None:
        """``(initial - latest) / |initial|``: the share of the starting loss gone; ``None`` before two levels exist."""
        initial, latest = self.initial, self.latest
        if initial is None or latest is None or self.finite < FIRST_LOSSES + RECENT_LOSSES or initial == 0:
            return None
        return (initial - latest) / abs(initial)

    def stalled(self, min_steps: int, min_improvement: float, rise: float = 0.25) -> bool:
        """At least ``min_steps`` finite losses, less than ``min_improvement`` of the starting loss gone, and not diverging."""
        gained = self.improvement()
        if gained is None or self.finite < min_steps or gained >= min_improvement:
            return False
        return self.divergence(rise) is None and not self.nonfinite

    @property
    def start_level(self) -> float | None:
        """Median of the first :data:`START_LOSSES` losses: where training started, robust to one batch."""
        return _median(self.first[:START_LOSSES])

    def divergence(self, rise: float) -> dict[str, Any] | None:
        """The loss climbed over ``rise`` x its best level and above where it started; ``None`` otherwise.

        Every level is a median, never one batch: the best level is the lowest
        block median, or the start level (:attr:`start_level`) when that is
        lower, since a run that blows up in its first steps has no better
        block. The climb must also stand out of the noise: the recent level
        over the best by more than :data:`CLIMB_Z` standard errors of the
        difference of the two medians, the noise read from the recent
        window's spread, so a noisy loss that wanders around a flat level is
        not diverging, however its medians fall.
        """
        start, latest = self.start_level, self.latest
        if start is None or latest is None or self.finite < FIRST_LOSSES + RECENT_LOSSES:
            return None
        if self.best is not None and self.best < start:
            best, best_step, samples = self.best, self.best_step, RECENT_LOSSES
        else:
            best, best_step, samples = start, self.first_step, min(START_LOSSES, len(self.first))
        if latest - best <= rise * max(abs(best), 1e-12) or latest <= start:
            return None
        # the standard error of a median is ~1.2533 sd / sqrt(n); the sd from the interquartile range
        spread = _robust_sd(self.recent)
        if latest - best <= CLIMB_Z * 1.2533 * spread * math.sqrt(1 / samples + 1 / len(self.recent)):
            return None
        return {"initial": start, "best": best, "best_step": best_step, "latest": latest}


def _robust_sd(values: Any) -> float:
    """The standard deviation a normal sample with this interquartile range has (quartiles interpolated linearly)."""
    data = list(values)
    if len(data) < 4:
        return 0.0
    lower, _, upper = statistics.quantiles(data, n=4, method="inclusive")
    return float(upper - lower) / 1.349


@dataclass
class NormHistory:
    """The total gradient norm over training: running median, spikes, pinned maxima (clipping before ``step``).

    Args:
        spike_factor: A norm above this multiple of the running median is a spike.
        window: Steps in the running median.
        min_history: Steps before spikes are judged.
    """

    spike_factor: float = 10.0
    window: int = 50
    min_history: int = 10
    recent: deque[float] = field(default_factory=deque)
    kept: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    steps: int = 0
    zero_steps: int = 0
    #: Step events seen, and those among them without a gradient (the norm missing or zero).
    recorded: int = 0
    without_gradient: int = 0
    #: The first :data:`HEALTHY_NORMS` norms of steps whose loss was not rising (see :meth:`Observations.feed`).
    healthy: list[float] = field(default_factory=list)
    spikes: int = 0
    max_spike_ratio: float = 0.0
    first_spike_step: int | None = None
    last_step: int | None = None
    top: float = 0.0
    pinned: int = 0
    maximum: float | None = None
    _sorted: list[float] = field(default_factory=list)  # the window's norms in order

    def add(self, step: int | None, norm: float | None) -> dict[str, Any] | None:
        """Record one step's norm; return the spike it is (norm, median, ratio), if it is one."""
        self.recorded += 1
        self.last_step = step
        if not norm:
            self.without_gradient += 1
        if norm is None or not math.isfinite(norm):
            return None
        self.steps += 1
        if norm == 0:
            self.zero_steps += 1
        self.kept.append(norm)
        if self.maximum is None or norm > self.maximum:
            self.maximum = norm
        top = self.top
        if top and abs(norm - top) <= 1e-4 * top:
            self.pinned += 1
        elif norm > top:
            self.top, self.pinned = norm, 1
        spike = None
        recent, ordered = self.recent, self._sorted
        n = len(recent)
        # the window's smallest norm bounds its median from below: most steps are no spike by that alone
        if n >= self.min_history and norm > self.spike_factor * ordered[0]:
            median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2  # the window's median
            if median > 0 and norm > self.spike_factor * median:
                self.spikes += 1
                self.max_spike_ratio = max(self.max_spike_ratio, norm / median)
                if self.first_spike_step is None:
                    self.first_spike_step = step
                spike = {"grad_norm": norm, "running_median": median, "ratio": norm / median}
        recent.append(norm)
        bisect.insort(ordered, norm)
        if len(recent) > self.window:
            del ordered[bisect.bisect_left(ordered, recent.popleft())]
        return spike

    @property
    def median(self) -> float | None:
        return _median(self.kept)

    @property
    def healthy_median(self) -> float | None:
        """The median of the healthy norms: the gradient's scale before anything exploded (``None`` without one)."""
        return _median(self.healthy)

    def pinned_share(self) -> float:
        return self.pinned / self.steps if self.steps else 0.0


@dataclass
class Clipping:
    """Evidence that the gradients the optimizer consumes are bounded.

    Attributes:
        declared: The clip threshold the user declared (``attach(..., grad_clip=)``).
        auto: The probe clips (``fix="auto"``).
        applied: Clip events the probe applied.
        threshold: The latest threshold in the probe's clip events.
        far_above: Applied clip events whose norm was over ``far_factor`` x the
            threshold learned from the norms (events of the loss brake, whose
            threshold follows the loss, not typical norms, are not counted).
        braked: Applied clip events of the loss brake (a diverging loss).
        seen: Steps on which the optimizer hooks saw the loop clip (``attach(optimizer=)``).
        seen_kind: How the loop clips (``norm`` or ``value``), as last seen.
    """

    declared: float | None = None
    auto: bool = False
    applied: int = 0
    threshold: float | None = None
    far_above: int = 0
    braked: int = 0
    far_factor: float = 10.0
    seen: int = 0
    seen_kind: str | None = None

    def add_seen(self, clip: Any) -> None:
        """A step event's ``clip``: what the loop did to the gradients before the optimizer."""
        if not isinstance(clip, dict) or clip.get("kind") not in ("norm", "value"):
            return
        threshold = finite_number(clip.get("threshold"))
        if threshold is None:
            return
        self.seen += 1
        # A user's fixed threshold is often far below typical norms (0.25 in word LMs): not counted in far_above.
        self.seen_kind, self.threshold = str(clip["kind"]), threshold

    def add_fix(self, event: dict[str, Any]) -> None:
        name = str(event.get("name", ""))
        if not name.startswith(("clip", "adaptive")) or not event.get("applied"):
            return
        self.applied += 1
        detail = event.get("detail") or {}
        if not isinstance(detail, dict):
            return
        if detail.get("reason") == "diverging loss":
            self.braked += 1
            return
        threshold, norm = finite_number(detail.get("max_norm")), number(detail.get("norm"))
        if threshold is not None:
            self.threshold = threshold
            if norm is not None and (not math.isfinite(norm) or norm > self.far_factor * threshold):
                self.far_above += 1

    def in_place(self, norms: NormHistory, min_pinned_fraction: float) -> tuple[bool, str, float | None]:
        """Whether clipping bounds the consumed gradients, how it was seen, and the threshold in use."""
        if self.declared is not None:
            return True, "declared", self.declared
        if self.seen:
            return (
                True,
                f"the loop clips by {self.seen_kind} before the optimizer step (seen on {self.seen} steps)",
                self.threshold,
            )
        if self.auto or self.applied:
            return True, "the probe clips (fix='auto')", self.threshold
        if norms.pinned >= 3 and norms.pinned_share() >= min_pinned_fraction:
            return True, "gradient norms pinned at a maximum (clipping before probe.step)", norms.top
        return False, "", None


@dataclass
class DeepRecord:
    """One deep probe of one track, as the rules need it."""

    step: int | None
    horizon: float  # math.inf when the signal does not decay
    rate: float | None
    seq_len: int
    grad_norms: list[Any] | None  # ||dL/dh_t|| per time step, as logged
    epsilon: float = 1e-3
    lyapunov: list[float] = field(default_factory=list)  # top exponents, natural log per step, largest first

    @cached_property
    def reached(self) -> list[bool] | None:
        """Per time step: the gradient there is >= epsilon x its maximum (``None``: no gradient recorded)."""
        return None if self.grad_norms is None else reached_steps(self.grad_norms, self.epsilon)


#: Probes of a track whose horizons are kept over the whole run (thinned evenly beyond it).
HORIZON_HISTORY = 512


@dataclass
class TrackHistory:
    """The deep probes of one track: the first few and the most recent few."""

    name: str
    module: str
    mode: str | None
    early: list[DeepRecord] = field(default_factory=list)
    recent: deque[DeepRecord] = field(default_factory=lambda: deque(maxlen=KEPT_PROBES))
    probes: int = 0
    max_seq_len: int = 0
    epsilon: float = 1e-3

    #: ``(step, horizon)`` of the probes over the whole run, thinned to every other one past HORIZON_HISTORY.
    horizons: list[tuple[int | None, float]] = field(default_factory=list)
    _stride: int = 1

    def add(self, record: DeepRecord) -> None:
        self.probes += 1
        self.max_seq_len = max(self.max_seq_len, record.seq_len)
        if len(self.early) < KEPT_PROBES:
            self.early.append(record)
        self.recent.append(record)
        if (self.probes - 1) % self._stride == 0:
            self.horizons.append((record.step, record.horizon))
            if len(self.horizons) > HORIZON_HISTORY:
                self.horizons = self.horizons[::2]
                self._stride *= 2

    def first_below(self, steps: float) -> int | None:
        """The first probe's step at which the horizon was under ``steps`` and stayed under it after (``None``:
        the latest probes are not under it)."""
        return self._first_where(lambda horizon: horizon < steps)

    def first_above(self, steps: float) -> int | None:
        """The first probe's step at which the horizon was over ``steps`` and stayed over it after."""
        return self._first_where(lambda horizon: horizon > steps)

    def _first_where(self, holds: Callable[[float], bool]) -> int | None:
        first = None
        for step, horizon in self.horizons:
            if holds(horizon):
                first = step if first is None else first
            else:
                first = None
        return first

    @property
    def latest(self) -> DeepRecord:
        return self.recent[-1]

    def horizon(self) -> float:
        """Median horizon over the recent probes (``inf``: no decay)."""
        return statistics.median(r.horizon for r in self.recent)

    def early_horizon(self) -> float:
        return statistics.median(r.horizon for r in self.early)

    def rate(self) -> float | None:
        return _median(r.rate for r in self.recent if r.rate is not None)

    @property
    def layer_key(self) -> str:
        """The layer this track belongs to: both directions of a bidirectional layer share it."""
        return self.name.removesuffix("_reverse")


def reached_steps(grad_norms: list[Any], epsilon: float) -> list[bool] | None:
    """Per time step, whether ``||dL/dh_t||`` is at least ``epsilon`` x its largest value."""
    values = [finite_number(v) or 0.0 for v in grad_norms]
    top = max(values, default=0.0)
    if top <= 0:
        return None
    return [v >= epsilon * top for v in values]


@dataclass(frozen=True)
class Signals:
    """The thresholds of the run's shared signals, which several rules read (so that no one rule owns them):
    ``[tool.gradprobe.signals]``; :data:`gradprobe.config.SIGNALS` says what each means."""

    loss_rise: float = SIGNALS["loss_rise"]
    spike_factor: float = SIGNALS["spike_factor"]
    spike_window: int = int(SIGNALS["spike_window"])
    min_history: int = int(SIGNALS["min_history"])
    extreme_factor: float = SIGNALS["extreme_factor"]
    min_spikes: float = SIGNALS["min_spikes"]
    min_pinned_fraction: float = SIGNALS["min_pinned_fraction"]

    @classmethod
    def of(cls, config: Config) -> Signals:
        """The signals as ``config`` sets them (defaults for the others)."""
        values = {name: config.signal(name) for name in SIGNALS}
        values["spike_window"] = int(values["spike_window"])
        values["min_history"] = int(values["min_history"])
        return cls(**values)  # type: ignore[arg-type]


class Observations:
    """The meta event, loss trend, gradient norms, clipping and deep-probe history of one run.

    Args:
        signals: The thresholds of the shared signals (spikes, a diverging loss, clipping in place).
    """

    def __init__(self, signals: Signals | None = None) -> None:
        self.signals = signals or Signals()
        self.meta: dict[str, Any] = {}
        #: The truncated-BPTT window the probe detected (``loop`` events), if any.
        self.detected_truncation: int | None = None
        self.loss = LossTrend()
        self.norms = NormHistory(self.signals.spike_factor, self.signals.spike_window, self.signals.min_history)
        self.clipping = Clipping()
        self.tracks: dict[str, TrackHistory] = {}
        self.settings: dict[str, Any] = {}
        self.bidirectional: set[str] = set()
        self.last_spike: dict[str, Any] | None = None

    def feed(self, event: dict[str, Any]) -> None:
        """Update the observations with one event (call before the rules see it)."""
        kind = event.get("kind")
        self.last_spike = None
        if kind == "step":  # most events
            step, loss, norm = event.get("step"), event.get("loss"), event.get("grad_norm")
            if type(loss) is not float:  # a float as read most of the time: no call
                loss = number(loss)
            if type(norm) is not float:
                norm = number(norm)
            self.loss.add(step, loss)
            spike = self.last_spike = self.norms.add(step, norm)
            if len(self.norms.healthy) < HEALTHY_NORMS and norm is not None and math.isfinite(norm) and norm > 0:
                start = self.loss.start_level
                if loss is None or (math.isfinite(loss) and (start is None or loss <= RISING * start)):
                    self.norms.healthy.append(norm)
            clip = event.get("clip")
            if clip is not None:
                self.clipping.add_seen(clip)
            if spike is not None:
                spike["step"] = step
        elif kind == "meta":
            self.meta = event
            settings = event.get("settings")
            self.settings = dict(settings) if isinstance(settings, dict) else {}
            self.clipping.declared = finite_number(self.settings.get("grad_clip"))
            self.clipping.auto = self.settings.get("fix") == "auto"
            for layer in event.get("layers") or []:
                if isinstance(layer, dict) and layer.get("bidirectional"):
                    self.bidirectional.add(str(layer.get("name")))
        elif kind == "fix":
            self.clipping.add_fix(event)
        elif kind == "loop" and event.get("truncation"):
            self.detected_truncation = int(event["truncation"])
        elif kind == "deep":
            self._add_deep(event)

    def loss_divergence(self) -> dict[str, Any] | None:
        """The loss diverging by the ``loss_rise`` signal (:meth:`LossTrend.divergence`), or ``None``."""
        return self.loss.divergence(self.signals.loss_rise)

    def _add_deep(self, event: dict[str, Any]) -> None:
        name = str(event["layer"])
        track = self.tracks.get(name)
        if track is None:
            track = self.tracks[name] = TrackHistory(name, str(event.get("module", name)), event.get("mode"))
        horizon = finite_number(event.get("horizon"))
        epsilon = track.epsilon = finite_number(event.get("epsilon")) or 1e-3
        grad_norms = event.get("grad_norms")
        track.add(
            DeepRecord(
                step=event.get("step"),
                horizon=math.inf if horizon is None else horizon,
                rate=finite_number(event.get("rate")),
                seq_len=int(event.get("seq_len") or 0),
                grad_norms=grad_norms if isinstance(grad_norms, list) else None,
                epsilon=epsilon,
                lyapunov=[v for v in (finite_number(x) for x in event.get("lyapunov") or []) if v is not None],
            )
        )

    def is_bidirectional(self, track: TrackHistory) -> bool:
        return track.name.endswith("_reverse") or track.module in self.bidirectional

    def starved(self, track: TrackHistory) -> tuple[int, int] | None:
        """``(starved steps, sequence length)`` of the track's layer at its latest probe.

        A time step is starved when no direction of the layer gets at least
        epsilon x its largest gradient there: the loss reaches it only through
        a recurrence that has faded (a loss on the last steps of a long sequence).
        ``None`` when no gradient was recorded.
        """
        latest = track.latest
        masks = [
            t.latest.reached
            for t in self.tracks.values()
            if t.layer_key == track.layer_key and t.latest.step == latest.step and t.latest.reached is not None
        ]
        masks = [m for m in masks if len(m) == latest.seq_len]
        if not masks or latest.seq_len == 0:
            return None
        starved = sum(1 for t in range(latest.seq_len) if not any(m[t] for m in masks))
        return starved, latest.seq_len
