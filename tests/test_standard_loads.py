"""The standard-library line reader (no gradprobe[fast]) accepts and refuses exactly what ``json.loads`` does."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from gradprobe import fast_lines

TRICKY = [
    b'{"v":1,"kind":"step","step":1}\n',
    b'{"a":1}',
    b' {"a":1}\n',
    b'{"a":1}  \n',
    b'{"a":1}\r\n',
    b'{"a":1}\n\n',
    b'{"a":NaN,"b":Infinity,"c":-Infinity}\n',
    b'\xef\xbb\xbf{"a":1}\n',  # a byte-order mark
    b'{"a":1} x\n',  # extra data
    b'{"a":\n',  # truncated
    b'{"a":1}{"b":2}\n',
    b"\xff\xfe\n",  # not UTF-8
    b'{"a":"\xe9"}\n',  # Latin-1 inside a string
    b"\x00\x00\x00{\n",
    b"",
    b"\n",
    b"[1,2]\n",
    b'"text"\n',
    b"1e400\n",
    b'{"a":1e400,"b":-0.0,"c":12345678901234567890123}\n',
    b'{"a":"\\ud800"}\n',  # a lone surrogate escape
    b'{"\xc3\xa9":"\\u00e9"}\n',
    b"[" * 100_000 + b"]" * 100_000 + b"\n",  # nested past the recursion limit
]


def _outcome(loads: Any, raw: bytes) -> tuple[str, Any]:
    try:
        value = loads(raw)
    except (ValueError, RecursionError) as exc:
        return type(exc).__name__, str(exc)
    return "ok", json.dumps(value, sort_keys=True)  # NaN-safe comparison


@pytest.mark.parametrize("raw", TRICKY, ids=range(len(TRICKY)))
def test_tricky_lines_read_as_json_loads_reads_them(raw: bytes) -> None:
    assert _outcome(fast_lines.standard_loads, raw) == _outcome(json.loads, raw)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(8 if depth < 3 else 5)
    if pick == 0:
        return rng.choice([None, True, False])
    if pick == 1:
        return rng.randint(-(10**20), 10**20)
    if pick == 2:
        return rng.choice([rng.uniform(-1e6, 1e6), math.nan, math.inf, -math.inf, 1e-320, -0.0])
    if pick in (3, 4):
        return "".join(rng.choice('ab"\\\n\t\u00e9\u2028\U0001f600') for _ in range(rng.randrange(6)))
    if pick in (5, 6):
        return {str(_random_value(rng, 3)): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_random_lines_and_their_corruptions_read_as_json_loads_reads_them() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        raw = (json.dumps(_random_value(rng), ensure_ascii=rng.random() < 0.5) + "\n").encode()
        cut = raw[: rng.randrange(len(raw) + 1)]  # a truncated or torn line
        flipped = bytearray(raw)
        flipped[rng.randrange(len(raw))] = rng.randrange(256)
        for line in (raw, cut, bytes(flipped)):
            assert _outcome(fast_lines.standard_loads, line) == _outcome(json.loads, line), line


def test_the_reader_without_msgspec_is_the_standard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_lines, "msgspec", None)
    loads, error, decode_known = fast_lines.readers()
    assert loads is fast_lines.standard_loads and error is ValueError and decode_known is None
