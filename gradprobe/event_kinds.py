"""One typed definition per run-log event kind: its fields, their types, what they mean.

Everything else derives from :data:`KINDS`: the schema check readers run
(:mod:`gradprobe.schema`), the msgspec structs of the fast reader
(:mod:`gradprobe.fast_lines`), which kinds the log writer flushes at once, and
the reference page ``docs/events.md`` (``python -m gradprobe.event_kinds``;
a test keeps it current).

Every line also carries the envelope: ``v`` (the schema version), ``kind`` and
``time`` (seconds since the epoch, when written). Readers accept fields a kind
does not declare (a newer writer may add some); the probe writes only declared
ones (a test runs it and checks).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from typing import Literal

#: The kinds of event a run log holds.
Kind = Literal[
    "meta",
    "step",
    "deep",
    "recurrence",
    "saturation",
    "unmeasured",
    "loop",
    "schedule",
    "fix",
    "finding",
    "error",
    "fault",
]


class FieldType(str, Enum):
    """The value types of event fields (the checks are in :mod:`gradprobe.schema`)."""

    INTEGER = "integer"  #: an int within +-2**62 (steps)
    COUNT = "count"  #: an int >= 0
    NUMBER = "number"  #: an int or float, or ``"nan"``/``"inf"``/``"-inf"``
    NUMBERS = "numbers"  #: a list of numbers
    NUMBER_MAP = "number map"  #: ``{name: number}``
    GATE_MAP = "gate map"  #: ``{weight: {gate: number}}``
    SHARE_MAP = "share map"  #: ``{name: share in [0, 1]}``
    RATE = "rate"  #: a finite log growth per step, ``|rate| <= 700``
    HORIZON = "horizon"  #: a number of steps >= 0, or ``"inf"``
    EPSILON = "epsilon"  #: a level in (0, 1)
    PROFILE_KIND = "profile kind"  #: ``"state"`` or ``"input"``
    SEVERITY = "severity"  #: ``"info"``, ``"warning"`` or ``"error"``
    TEXT = "text"  #: a string
    TEXTS = "texts"  #: a list of strings
    FLAG = "flag"  #: a boolean
    MAPPING = "mapping"  #: a JSON object
    MAPPINGS = "mappings"  #: a list of JSON objects
    ANY = "any"  #: any JSON value


@dataclass(frozen=True)
class Field:
    """One field of an event kind.

    Attributes:
        name: The key in the event.
        type: Its value type.
        doc: What it means.
        required: Present and not ``null`` in every event of the kind; other fields may be missing or ``null``.
    """

    name: str
    type: FieldType
    doc: str
    required: bool = False


@dataclass(frozen=True)
class EventKind:
    """One kind of event.

    Attributes:
        kind: Its name (the ``kind`` field).
        doc: When it is written and what it says.
        fields: Its fields, required ones first.
        urgent: The log writer flushes it at once (it matters if the run dies next).
        frequent: Written on many steps: the fast reader decodes it with a msgspec struct.
    """

    kind: Kind
    doc: str
    fields: tuple[Field, ...]
    urgent: bool = False
    frequent: bool = False

    def field(self, name: str) -> Field | None:
        """The field called ``name``, if the kind declares one."""
        return next((f for f in self.fields if f.name == name), None)


T = FieldType

KINDS: dict[str, EventKind] = {
    k.kind: k
    for k in (
        EventKind(
            "meta",
            "First line: versions, the process, the recurrent layers found, the settings and the rule configuration.",
            (
                Field("rank", T.INTEGER, "torch.distributed rank, or null outside distributed training"),
                Field("world_size", T.INTEGER, "number of processes"),
                Field("gradprobe", T.TEXT, "gradprobe version"),
                Field("torch", T.TEXT, "torch version"),
                Field("model", T.TEXT, "class name of the model"),
                Field(
                    "layers",
                    T.MAPPINGS,
                    "the recurrent layers: name, type, mode, hidden_size, num_layers, tracks, weight scales ...",
                ),
                Field("settings", T.MAPPING, "the probe settings (every, fix, declared needs ...)"),
                Field(
                    "config",
                    T.MAPPING,
                    "the rule configuration the run was judged with ([tool.gradprobe]-shaped; "
                    "`gradprobe report` uses it by default)",
                ),
                Field("optimizer", T.TEXT, "class name of the optimizer given to attach, if any"),
            ),
            urgent=True,
        ),
        EventKind(
            "step",
            "Every training step.",
            (
                Field("step", T.INTEGER, "the training step (0-based)", required=True),
                Field("loss", T.NUMBER, "the loss"),
                Field("grad_norm", T.NUMBER, "total L2 norm of all parameter gradients"),
                Field("params", T.NUMBER_MAP, "gradient norm per parameter name"),
                Field("gates", T.GATE_MAP, "per recurrent weight, gradient norm per gate"),
                Field("nonfinite", T.MAPPING, "null, or where non-finite values appeared first"),
                Field("clip", T.MAPPING, "what the loop did to the gradients before the optimizer (optimizer hooks)"),
                Field("grad_scale", T.NUMBER, "the AMP loss scale, when not 1"),
                Field("skipped", T.COUNT, "optimizer steps the AMP scaler skipped"),
            ),
            frequent=True,
        ),
        EventKind(
            "deep",
            "Every `every` steps, per track (a layer direction or a cell): how the gradient travels through time.",
            (
                Field("layer", T.TEXT, "the track: module name plus .l{k} / _reverse for fused stacks", required=True),
                Field("step", T.INTEGER, "the training step", required=True),
                Field("module", T.ANY, "the recurrent module the track belongs to"),
                Field("mode", T.ANY, "the cell kind (LSTM, GRU, RNN_TANH, ...), null for custom cells"),
                Field("seq_len", T.COUNT, "time steps of the measured sequence"),
                Field("batch", T.ANY, "batch rows of the measured call"),
                Field("grad_norms", T.NUMBERS, "||dL/dh_t|| per time step"),
                Field("profile", T.NUMBERS, "||v^T dS_T/dS_(T-k)|| for k = 0..T-1 (state or input space)"),
                Field("jacobian_norms", T.NUMBERS, "spectral norm of dS_t/dS_(t-1) per step"),
                Field("rate", T.RATE, "fitted log growth per step (negative: decay)"),
                Field("horizon", T.HORIZON, "steps until the propagated signal falls below epsilon (inf: no decay)"),
                Field("epsilon", T.EPSILON, "the level the horizon is read at"),
                Field("chained", T.ANY, "every call was handed the previous call's state itself"),
                Field("lyapunov", T.NUMBERS, "top Lyapunov exponents, natural log per step, largest first"),
                Field(
                    "profile_kind",
                    T.PROFILE_KIND,
                    "state: through the layer's state; input: through the inputs of a module whose one call "
                    "covers a whole sequence",
                ),
            ),
            urgent=True,
            frequent=True,
        ),
        EventKind(
            "recurrence",
            "Every `every` steps, per diagonal linear recurrence (LRU, minGRU, RG-LRU, Mamba ...): its decays "
            "|a_t|, read exactly from the layer's parameters and the inputs of its latest call.",
            (
                Field("layer", T.TEXT, "the layer", required=True),
                Field("step", T.INTEGER, "the training step", required=True),
                Field("recurrence", T.TEXT, "the kind of layer (lru, mingru, mamba, mamba2, rglru, ...)"),
                Field("seq_len", T.COUNT, "time steps of the measured call"),
                Field("channels", T.COUNT, "state entries that decay on their own"),
                Field("decay_min", T.NUMBER, "smallest |a_t| over channels, rows and steps"),
                Field("decay_max", T.NUMBER, "largest |a_t| over channels, rows and steps"),
                Field(
                    "top_decay",
                    T.NUMBER,
                    "the slowest channel's decay per step (geometric mean of |a_t| over rows and steps)",
                ),
                Field(
                    "time_constants",
                    T.NUMBERS,
                    "per-channel memory tau = -1/mean ln|a_t| (steps to fall by e): its 0, 10, ..., 100th "
                    "percentiles over channels",
                ),
                Field("efold_horizon", T.HORIZON, "steps until the slowest gradient path falls by e (inf: no decay)"),
                Field("cumulative", T.NUMBER, "the slowest path's decay over the whole sequence"),
                Field(
                    "sensitivity",
                    T.NUMBER,
                    "sqrt(1 + r^2) / (1 - r^2)^1.5 at r = top_decay: how fast the state's sensitivity to the decay "
                    "grows as r -> 1 (Zucchet & Orvieto 2024; inf at r >= 1)",
                ),
                Field("nonfinite", T.COUNT, "non-finite decays in the call"),
            ),
            urgent=True,
        ),
        EventKind(
            "saturation",
            "On sampled and deep steps, per track: the share of gate activations in their flat regions.",
            (
                Field("layer", T.TEXT, "the track", required=True),
                Field("fractions", T.SHARE_MAP, "per gate, share of activations in the flat region", required=True),
                Field("step", T.INTEGER, "the training step"),
                Field("mode", T.ANY, "the cell kind"),
                Field("low", T.SHARE_MAP, "sigmoid gates: share below 0.05 (closed)"),
                Field("dead_units", T.ANY, "ReLU cells: share of units never active"),
                Field("units", T.COUNT, "hidden units"),
                Field("samples", T.COUNT, "(step, row) samples"),
                Field("deep", T.ANY, "from a deep step (true) or sampled (false)"),
            ),
            frequent=True,
        ),
        EventKind(
            "unmeasured",
            "At close, for each attached recurrent module no deep step could measure (GP001 reports it).",
            (
                Field("layer", T.TEXT, "the module", required=True),
                Field("reason", T.TEXT, "why: scripted, never called, called without gradients, ...", required=True),
                Field("step", T.INTEGER, "the last training step"),
                Field("tracks", T.TEXTS, "the tracks not measured"),
            ),
        ),
        EventKind(
            "loop",
            "What the probe learned about the training loop: the truncated-BPTT window of a loop that starts each "
            "step from a detached copy of the previous step's final state (when first seen and when it moves).",
            (
                Field("step", T.INTEGER, "the training step", required=True),
                Field("layer", T.TEXT, "the recurrent module", required=True),
                Field("truncation", T.COUNT, "the typical window (steps)"),
            ),
        ),
        EventKind(
            "schedule",
            "With every='auto': the intervals chosen from measured costs, whenever they change.",
            (
                Field("step", T.INTEGER, "the training step", required=True),
                Field("every", T.COUNT, "the deep-probe interval chosen", required=True),
                Field("saturation_every", T.COUNT, "the sampling interval chosen"),
                Field("budget", T.NUMBER, "the overhead allowed (share of a plain step)"),
                Field("plain_ms", T.NUMBER, "a plain training step (median)"),
                Field("cheap_ms", T.NUMBER, "the probe's cost on every step"),
                Field("deep_extra_ms", T.NUMBER, "the extra time of a deep step"),
                Field("sample_extra_ms", T.NUMBER, "the extra time of a sampled step"),
                Field("expected_overhead", T.NUMBER, "the overhead the choice is expected to cost"),
                Field("over_budget", T.FLAG, "the cheap recording alone exceeds the budget"),
            ),
        ),
        EventKind(
            "fix",
            "A remedy applied (or, with fix='recommend', one that would have been).",
            (
                Field("name", T.TEXT, "the fix", required=True),
                Field("step", T.INTEGER, "the training step"),
                Field("applied", T.FLAG, "applied (true) or only recommended (false)"),
                Field("detail", T.MAPPING, "its numbers (threshold, norm, ...)"),
            ),
            urgent=True,
        ),
        EventKind(
            "finding",
            "A rule finding (gradprobe.findings.Finding).",
            (
                Field("code", T.TEXT, "rule code such as GP101", required=True),
                Field("severity", T.SEVERITY, "info, warning or error", required=True),
                Field("message", T.TEXT, "one line with the measured numbers", required=True),
                Field("name", T.TEXT, "rule name such as vanishing-gradient"),
                Field("layer", T.TEXT, "module or track"),
                Field("step", T.INTEGER, "the step where it was seen (null: static)"),
                Field("evidence", T.MAPPING, "the numbers behind the message"),
                Field("fix", T.TEXT, "the remedies as text"),
                Field("fixes", T.MAPPINGS, "the remedies as data: action, params, safety"),
                Field("first_step", T.INTEGER, "the first step it was seen at (measured findings)"),
                Field("last_step", T.INTEGER, "the last step it was seen at (measured findings)"),
            ),
            urgent=True,
        ),
        EventKind(
            "error",
            "Measuring failed and the probe switched itself off (its layers are reported not measured).",
            (
                Field("message", T.TEXT, "the error", required=True),
                Field("where", T.TEXT, "what the probe was doing"),
                Field("step", T.INTEGER, "the training step"),
            ),
            urgent=True,
        ),
        EventKind(
            "fault",
            "One part of the probe (a sink, a plugin hook, the run log, the rules) failed and was switched off alone, "
            "or a sink fell behind and lost events.",
            (
                Field("part", T.TEXT, "the part", required=True),
                Field("message", T.TEXT, "the error", required=True),
                Field("step", T.INTEGER, "the training step"),
            ),
        ),
    )
}

#: Kinds the log writer flushes at once.
URGENT = frozenset(k.kind for k in KINDS.values() if k.urgent)


def markdown() -> str:
    """The reference page of the run log (``docs/events.md``)."""
    lines = [
        "# Run-log events",
        "",
        "<!-- generated by `python -m gradprobe.event_kinds > docs/events.md` from gradprobe/event_kinds.py -->",
        "",
        (
            "A run log is JSON Lines: one event per line. Every line carries `v` (the schema version), `kind` and "
            "`time` (seconds since the epoch). Fields marked required are present and not null; the others may be "
            "missing or null. Readers accept fields a kind does not declare. Non-finite numbers are written as the "
            'strings `"nan"`, `"inf"` and `"-inf"`.'
        ),
    ]
    for k in KINDS.values():
        flags = ", ".join(x for x, on in (("flushed at once", k.urgent), ("fast-decoded", k.frequent)) if on)
        lines += ["", f"## `{k.kind}`", "", k.doc + (f" ({flags})" if flags else ""), ""]
        lines += ["| field | type | required | meaning |", "|---|---|---|---|"]
        lines += [f"| `{f.name}` | {f.type.value} | {'yes' if f.required else ''} | {f.doc} |" for f in k.fields]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - exercised by the docs test through markdown()
    sys.stdout.write(markdown())
