"""The run-log schema check: which fields each event kind carries, and their types.

The fields and types come from the one definition of each kind in
:mod:`gradprobe.event_kinds`; this module holds the checks of the field types.

Readers (the report, ``gradprobe report``) check every event read back from a
log with :func:`problem`; an event that does not fit is skipped and reported
with its line number instead of crashing a renderer. Unknown kinds pass (a
newer writer may add kinds); unknown fields pass too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain
from typing import Any

from gradprobe.event_kinds import KINDS, FieldType
from gradprobe.findings import SEVERITIES

Check = Callable[[Any], bool]

#: Largest |log growth per step| a fit can produce before ``exp`` overflows.
MAX_RATE = 700.0


#: What a JSON parser gives for a number (``bool`` is not one of them: ``type(True) is bool``).
_NUMBER_TYPES = frozenset({int, float})
_ENCODED = frozenset({"nan", "inf", "-inf"})


def number(value: Any) -> bool:
    """An int/float, or the encoded ``"nan"``/``"inf"``/``"-inf"``."""
    if type(value) in _NUMBER_TYPES:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, str) and value in _ENCODED


class _Optional:
    """A check that also accepts ``None`` (:func:`problem` reads ``check`` to skip the call for ``None``)."""

    __slots__ = ("check",)

    def __init__(self, check: Check) -> None:
        self.check = check

    def __call__(self, value: Any) -> bool:
        return value is None or self.check(value)


def optional(check: Check) -> Check:
    return _Optional(check)


#: Integers (steps, counts) lie strictly within +-INTEGER_LIMIT.
INTEGER_LIMIT = 1 << 62


def integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < INTEGER_LIMIT


def count(value: Any) -> bool:
    return integer(value) and value >= 0


def text(value: Any) -> bool:
    return isinstance(value, str)


def flag(value: Any) -> bool:
    return isinstance(value, bool)


def mapping(value: Any) -> bool:
    return isinstance(value, dict)


def _all_numbers(values: Any) -> bool:
    # the common case (every value a parsed float or int) without a call per value
    return _NUMBER_TYPES.issuperset(map(type, values)) or all(number(v) for v in values)


def numbers(value: Any) -> bool:
    return isinstance(value, list) and _all_numbers(value)


def number_map(value: Any) -> bool:
    return isinstance(value, dict) and _all_numbers(value.values())


def share_map(value: Any) -> bool:
    return number_map(value) and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in value.values())


def rate(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and abs(value) <= MAX_RATE  # first: an integer too large for a float fails here, not in isfinite
        and math.isfinite(value)
    )


def horizon(value: Any) -> bool:
    return number(value) and (value in ("inf",) or (isinstance(value, (int, float)) and value >= 0))


def severity(value: Any) -> bool:
    return value in SEVERITIES


def gate_map(value: Any) -> bool:
    return isinstance(value, dict) and all(number_map(g) for g in value.values())


def epsilon(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1


def profile_kind(value: Any) -> bool:
    return value in ("state", "input")


def texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def mappings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, dict) for x in value)


#: The check of each field type of :mod:`gradprobe.event_kinds` (``ANY`` is not checked).
CHECKS: dict[FieldType, Check] = {
    FieldType.INTEGER: integer,
    FieldType.COUNT: count,
    FieldType.NUMBER: number,
    FieldType.NUMBERS: numbers,
    FieldType.NUMBER_MAP: number_map,
    FieldType.GATE_MAP: gate_map,
    FieldType.SHARE_MAP: share_map,
    FieldType.RATE: rate,
    FieldType.HORIZON: horizon,
    FieldType.EPSILON: epsilon,
    FieldType.PROFILE_KIND: profile_kind,
    FieldType.SEVERITY: severity,
    FieldType.TEXT: text,
    FieldType.TEXTS: texts,
    FieldType.FLAG: flag,
    FieldType.MAPPING: mapping,
    FieldType.MAPPINGS: mappings,
}

#: kind -> {field: (check, required)}, derived from :data:`gradprobe.event_kinds.KINDS`; a field that is not
#: required may also be ``null``.
FIELDS: dict[str, dict[str, tuple[Check, bool]]] = {
    kind: {
        f.name: (CHECKS[f.type] if f.required else optional(CHECKS[f.type]), f.required)
        for f in spec.fields
        if f.type is not FieldType.ANY
    }
    for kind, spec in KINDS.items()
}


#: FIELDS as :func:`problem` walks them: kind -> ((field, check, required, accepts None), ...).
_WALK: dict[str, tuple[tuple[str, Check, bool, bool], ...]] = {
    kind: tuple(
        (name, check.check if isinstance(check, _Optional) else check, required, isinstance(check, _Optional))
        for name, (check, required) in fields.items()
    )
    for kind, fields in FIELDS.items()
}
_MISSING = object()


_NUMBER_OR_NONE = frozenset({int, float, type(None)})
_MAPPING_OR_NONE = frozenset({dict, type(None)})
_MAPPING = frozenset({dict})
#: The fields of a step event that :func:`_plain_step` reads; with any other, the walk decides.
_PLAIN_STEP_FIELDS = frozenset({"v", "kind", "time", *(f.name for f in KINDS["step"].fields)})


def _plain_step(event: dict[str, Any]) -> bool:
    """A step event as the probe writes it, every value of a plain JSON type: it fits ``FIELDS["step"]``.

    Most lines of a run log are step events; this checks one with a few type
    tests instead of a call per field and per gate. ``False`` means *not
    sure*: :func:`problem` then walks the fields and says what is wrong.
    """
    step = event.get("step")
    if type(step) is not int or not -INTEGER_LIMIT < step < INTEGER_LIMIT or not _PLAIN_STEP_FIELDS.issuperset(event):
        return False
    if not _NUMBER_OR_NONE.issuperset(
        (type(event.get("loss")), type(event.get("grad_norm")), type(event.get("grad_scale")))
    ):
        return False
    if not _MAPPING_OR_NONE.issuperset((type(event.get("nonfinite")), type(event.get("clip")))):
        return False
    skipped = event.get("skipped")
    if skipped is not None and not (type(skipped) is int and 0 <= skipped < INTEGER_LIMIT):
        return False
    params, gates = event.get("params"), event.get("gates")
    if params is not None and not (type(params) is dict and _NUMBER_TYPES.issuperset(map(type, params.values()))):
        return False
    if gates is None:
        return True
    if type(gates) is not dict or not _MAPPING.issuperset(map(type, gates.values())):
        return False
    return _NUMBER_TYPES.issuperset(map(type, chain.from_iterable(map(dict.values, gates.values()))))


def problem(event: dict[str, Any]) -> str | None:
    """Why ``event`` does not fit the schema, in a few words; ``None`` when it fits."""
    if event.get("kind") == "step" and _plain_step(event):
        return None
    return _walk(event)


def _walk(event: dict[str, Any]) -> str | None:
    """:func:`problem`, field by field."""
    kind = event.get("kind")
    if not isinstance(kind, str):
        return "'kind' is not a string"
    fields = _WALK.get(kind)
    if fields is None:
        return None
    for name, check, required, nullable in fields:
        value = event.get(name, _MISSING)
        if value is _MISSING:
            if required:
                return f"{kind} event without {name!r}"
            continue
        if (value is None and nullable) or check(value):
            continue
        return f"{kind} event with a bad {name!r} ({_show(value)})"
    return None


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
