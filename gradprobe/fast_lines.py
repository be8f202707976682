"""Run-log lines read with msgspec when it is installed (``pip install 'gradprobe[fast]'``).

A long log is mostly the lines the probe writes on every step (``step``) and
on deep or sampled steps (``deep``, ``saturation``). With msgspec, such a line
is decoded and checked against the schema (``FIELDS`` of
:mod:`gradprobe.schema`) in one pass in C, by the struct of its kind
(:class:`StepLine`, :class:`DeepLine`, :class:`SaturationLine`). A line a
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
        return json.loads, ValueError, None
    return _GENERIC.decode, msgspec.DecodeError, _decode_known


if msgspec is not None:
    from typing import Annotated, Literal

    from gradprobe.schema import INTEGER_LIMIT, MAX_RATE

    # The checks of gradprobe.schema, as msgspec types (`| None`: the field may be null).
    _Number = float | Literal["nan", "inf", "-inf"]
    _Numbers = list[_Number] | None
    _Integer = Annotated[int, msgspec.Meta(gt=-INTEGER_LIMIT, lt=INTEGER_LIMIT)]
    _Count = Annotated[int, msgspec.Meta(ge=0, lt=INTEGER_LIMIT)] | None
    _Share = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

    class StepLine(msgspec.Struct, forbid_unknown_fields=True):
        """``FIELDS["step"]`` of the schema, plus the envelope (``v``, ``kind``, ``time``)."""

        v: int
        kind: Literal["step"]
        step: _Integer
        time: float | None = None
        loss: _Number | None = None
        grad_norm: _Number | None = None
        params: dict[str, _Number] | None = None
        gates: dict[str, dict[str, _Number]] | None = None
        nonfinite: dict[str, Any] | None = None
        clip: dict[str, Any] | None = None
        grad_scale: _Number | None = None
        skipped: _Count = None

    class DeepLine(msgspec.Struct, forbid_unknown_fields=True):
        """``FIELDS["deep"]``, the envelope, and the fields the probe writes that the schema leaves open."""

        v: int
        kind: Literal["deep"]
        layer: str
        step: _Integer
        time: float | None = None
        seq_len: _Count = None
        grad_norms: _Numbers = None
        profile: _Numbers = None
        jacobian_norms: _Numbers = None
        rate: Annotated[float, msgspec.Meta(ge=-MAX_RATE, le=MAX_RATE)] | None = None
        horizon: Annotated[float, msgspec.Meta(ge=0.0)] | Literal["inf"] | None = None
        lyapunov: _Numbers = None
        # not gt=0.0: msgspec checks it as >= the smallest denormal, which is 0 where the CPU flushes denormals
        epsilon: Annotated[float, msgspec.Meta(ge=sys.float_info.min, lt=1.0)] | None = None
        profile_kind: Literal["state", "input"] | None = None
        module: Any = None
        mode: Any = None
        batch: Any = None
        chained: Any = None

    class SaturationLine(msgspec.Struct, forbid_unknown_fields=True):
        """``FIELDS["saturation"]``, the envelope, and the fields the probe writes that the schema leaves open."""

        v: int
        kind: Literal["saturation"]
        layer: str
        fractions: dict[str, _Share]
        time: float | None = None
        step: _Integer | None = None
        low: dict[str, _Share] | None = None
        units: _Count = None
        samples: _Count = None
        mode: Any = None
        dead_units: Any = None
        deep: Any = None

    _GENERIC = msgspec.json.Decoder()
    _BY_KIND: dict[bytes, msgspec.json.Decoder[Any]] = {
        b"step": msgspec.json.Decoder(StepLine),
        b"deep": msgspec.json.Decoder(DeepLine),
        b"saturation": msgspec.json.Decoder(SaturationLine),
    }
    _REFUSED = (msgspec.ValidationError, msgspec.DecodeError)
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
