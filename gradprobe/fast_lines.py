"""Run-log lines read with msgspec when it is installed (``pip install 'gradprobe[fast]'``).

A long log is mostly the lines the probe writes on every step (``step``) and
on deep or sampled steps (``deep``, ``saturation``). With msgspec, such a line
is decoded and checked against the schema in one pass in C, by the struct of
its kind, made from the kind's one definition in :mod:`gradprobe.event_kinds`
(:func:`line_struct`). A line a
struct does not accept (a field it does not know, a value outside the schema,
a number it reads differently such as ``1e400``) is not judged here: the
reader parses it generically and :func:`gradprobe.schema.problem` says what is
wrong with it, exactly as without msgspec. Other lines are parsed by
msgspec's generic decoder, and what that refuses (``NaN`` literals) by the
standard library's.

Two differences from the generic path, neither visible through ``event.get``:
numbers the schema types as numbers are floats (``1`` reads as ``1.0``), and
optional fields that a line leaves out are present as ``None``.
"""

from __future__ import annotations

import json
import json.scanner
import sys
from collections.abc import Callable
from typing import Any

try:
    import msgspec
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    msgspec = None  # type: ignore[assignment]

#: How every line the probe writes begins (``EventWriter``: ``v``, ``kind``, then the fields).
KIND_PREFIX = b'{"v":1,"kind":"'

Loads = Callable[[bytes], Any]
KnownDecoder = Callable[[bytes], "dict[str, Any] | None"]


def readers() -> tuple[Loads, type[Exception], KnownDecoder | None]:
    """``(loads, error, decode_known)``: the fastest parser installed, the error it raises for a line it refuses,
    and the decoder of the frequent kinds (``None`` without msgspec): the event of such a line when the schema
    accepts it, else ``None`` (the line is then the generic path's to judge).
    """
    if msgspec is None:
        return standard_loads, ValueError, None
    return _GENERIC.decode, msgspec.DecodeError, _decode_known


_SCAN = getattr(json.scanner, "c_make_scanner", None)
_SCAN_ONCE = _SCAN(json.JSONDecoder()) if _SCAN is not None else None


def standard_loads(raw: bytes) -> Any:
    """``json.loads(raw)`` for one line of UTF-8, without its per-call detours (encoding detection, the Python
    wrapper around the C scanner): ~12% faster on a run log's lines. What the scanner alone does not take (a
    byte-order mark, space around the value, anything invalid) goes to ``json.loads``, so a line is accepted or
    refused, with the same error, exactly as ``json.loads`` does."""
    if _SCAN_ONCE is not None:
        try:
            text = raw.decode()
            value, end = _SCAN_ONCE(text, 0)
        except (ValueError, StopIteration, RecursionError):
            pass
        else:
            if end == len(text) or (end == len(text) - 1 and text[end] == "\n"):
                return value
    return json.loads(raw)


if msgspec is not None:
    from typing import Annotated, Literal

    from gradprobe.event_kinds import KINDS, EventKind, FieldType
    from gradprobe.schema import INTEGER_LIMIT, MAX_RATE

    # The checks of gradprobe.schema, as msgspec types (`| None`: the field may be null).
    _Number = float | Literal["nan", "inf", "-inf"]
    _Integer = Annotated[int, msgspec.Meta(gt=-INTEGER_LIMIT, lt=INTEGER_LIMIT)]
    _Share = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

    #: The msgspec type of each field type of :mod:`gradprobe.event_kinds`.
    _TYPES: dict[FieldType, Any] = {
        FieldType.INTEGER: _Integer,
        FieldType.COUNT: Annotated[int, msgspec.Meta(ge=0, lt=INTEGER_LIMIT)],
        FieldType.NUMBER: _Number,
        FieldType.NUMBERS: list[_Number],
        FieldType.NUMBER_MAP: dict[str, _Number],
        FieldType.GATE_MAP: dict[str, dict[str, _Number]],
        FieldType.SHARE_MAP: dict[str, _Share],
        FieldType.RATE: Annotated[float, msgspec.Meta(ge=-MAX_RATE, le=MAX_RATE)],
        FieldType.HORIZON: Annotated[float, msgspec.Meta(ge=0.0)] | Literal["inf"],
        # not gt=0.0: msgspec checks it as >= the smallest denormal, which is 0 where the CPU flushes denormals
        FieldType.EPSILON: Annotated[float, msgspec.Meta(ge=sys.float_info.min, lt=1.0)],
        FieldType.PROFILE_KIND: Literal["state", "input"],
        FieldType.SEVERITY: Literal["info", "warning", "error"],
        FieldType.TEXT: str,
        FieldType.TEXTS: list[str],
        FieldType.FLAG: bool,
        FieldType.MAPPING: dict[str, Any],
        FieldType.MAPPINGS: list[dict[str, Any]],
        FieldType.ANY: Any,
    }

    def line_struct(spec: EventKind) -> type[msgspec.Struct]:
        """The struct of one kind: the envelope (``v``, ``kind``, ``time``), the required fields (not null),
        the others optional (missing or null: ``None``); a field it does not know refuses the line."""
        required = [(f.name, _TYPES[f.type]) for f in spec.fields if f.required]
        optional = [(f.name, _TYPES[f.type] | None, None) for f in spec.fields if not f.required]
        envelope = [("v", int), ("kind", Literal[spec.kind])]
        return msgspec.defstruct(
            f"{spec.kind.capitalize()}Line",
            [*envelope, *required, ("time", float | None, None), *optional],
            forbid_unknown_fields=True,
        )

    _GENERIC = msgspec.json.Decoder()
    #: A decoder per frequent kind (``step``, ``deep``, ``saturation``).
    _BY_KIND: dict[bytes, msgspec.json.Decoder[Any]] = {
        kind.encode(): msgspec.json.Decoder(line_struct(spec)) for kind, spec in KINDS.items() if spec.frequent
    }
    _REFUSED = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)  # RecursionError: nested too deep
    _START = len(KIND_PREFIX)

    _STEP_PREFIX = KIND_PREFIX + b'step"'
    _STEP = _BY_KIND[b"step"]

    def _decode_known(raw: bytes) -> dict[str, Any] | None:
        if raw.startswith(_STEP_PREFIX):  # most lines
            decoder = _STEP
        elif raw.startswith(KIND_PREFIX):
            found = _BY_KIND.get(raw[_START : raw.find(b'"', _START)])
            if found is None:
                return None
            decoder = found
        else:
            return None
        try:
            return msgspec.structs.asdict(decoder.decode(raw))
        except _REFUSED:
            return None
