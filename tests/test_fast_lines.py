"""Fast reading of run-log lines (gradprobe[fast]): the structs of the frequent kinds accept only what the schema accepts,
read it as the generic path does, and take every line a real probe writes."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe import fast_lines, schema
from gradprobe.demo import _flushing_denormals

pytestmark = pytest.mark.skipif(
    fast_lines.msgspec is None, reason="msgspec is not installed (pip install 'gradprobe[fast]')"
)

#: One event of each kind with a struct, every field the probe writes, as the probe writes them.
CANONICAL: dict[str, dict[str, Any]] = {
    "step": {
        "time": 1.5,
        "step": 3,
        "loss": 0.7,
        "grad_norm": 1.25,
        "params": {"w": 0.5, "b": "nan"},
        "gates": {"w": {"input": 0.1, "forget": 0.2}},
        "nonfinite": None,
        "clip": {"kind": "norm", "threshold": 1.0},
        "grad_scale": 1024.0,
        "skipped": 0,
    },
    "deep": {
        "time": 1.5,
        "step": 4,
        "layer": "rnn.l0",
        "module": "rnn",
        "mode": "LSTM",
        "seq_len": 3,
        "batch": 2,
        "grad_norms": [0.1, 0.2, 0.3],
        "profile": [1.0, 0.5, 0.25],
        "jacobian_norms": [0.9, 0.9, "inf"],
        "rate": -0.69,
        "horizon": 9.9,
        "epsilon": 0.001,
        "chained": True,
        "lyapunov": [-0.1, -0.5],
    },
    "saturation": {
        "time": 1.5,
        "step": 5,
        "layer": "rnn.l0",
        "mode": "LSTM",
        "fractions": {"input": 0.1, "cell": 1},
        "low": {"forget": 0.0},
        "dead_units": None,
        "units": 16,
        "samples": 80,
        "deep": False,
    },
}

#: Values tried in every field: the schema's edges (bools are not numbers, integers stay within 2**62, shares within [0, 1], ...).
VALUES: list[Any] = [
    None,
    0,
    1,
    -1,
    0.5,
    1.5,
    -0.5,
    699.5,
    700.5,
    -700.5,
    2**62 - 1,
    2**62,
    -(2**62) + 1,
    -(2**62),
    True,
    False,
    "nan",
    "inf",
    "-inf",
    "x",
    [],
    [1.0, "nan"],
    [True],
    ["x"],
    {},
    {"a": 0.3},
    {"a": "nan"},
    {"a": 2},
    {"a": {"b": 1.0}},
    {"a": {"b": "x"}},
    {"a": True},
    {"a": None},
]


def _line(kind: str, fields: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "kind": kind, **fields}, separators=(",", ":")).encode()


def _variants(events: dict[str, dict[str, Any]] = CANONICAL) -> list[tuple[str, str, bytes]]:
    found = []
    for kind, base in events.items():
        found.append((kind, "as written", _line(kind, base)))
        for name in base:
            less = {k: v for k, v in base.items() if k != name}
            found.append((kind, f"without {name}", _line(kind, less)))
            for value in VALUES:
                changed = copy.deepcopy(base)
                changed[name] = value
                found.append((kind, f"{name}={value!r}", _line(kind, changed)))
        found.append((kind, "an unknown field", _line(kind, {**base, "extra": 1})))
    return found


def _same(fast: Any, generic: Any) -> bool:
    if isinstance(generic, dict):
        return (
            isinstance(fast, dict)
            and fast.keys() == generic.keys()
            and all(_same(fast[k], generic[k]) for k in generic)
        )
    if isinstance(generic, list):
        return isinstance(fast, list) and len(fast) == len(generic) and all(map(_same, fast, generic))
    if isinstance(generic, (int, float)) and not isinstance(generic, bool):  # a reader takes float(value)
        return type(fast) in (int, float) and (
            float(fast) == float(generic) or (math.isnan(fast) and math.isnan(generic))
        )
    return type(fast) is type(generic) and fast == generic


def test_the_structs_accept_only_what_the_schema_accepts_and_read_it_alike():
    """Every field of every frequent kind, set to each edge value, removed, or joined by an unknown one."""
    _, _, decode_known = fast_lines.readers()
    assert decode_known is not None
    taken = refused_but_valid = 0
    for kind, what, line in _variants():
        generic = json.loads(line)
        fast = decode_known(line)
        if fast is None:
            refused_but_valid += schema.problem(generic) is None
            continue
        taken += 1
        assert schema.problem(generic) is None, f"{kind} {what}: the struct took a line the schema refuses"
        assert all(fast[k] is None for k in fast.keys() - generic.keys()), f"{kind} {what}"
        assert _same({k: fast[k] for k in generic}, generic), f"{kind} {what}: read differently"
    # the struct refuses what it need not judge (an unknown field, ints where the schema leaves a field open): few lines
    assert taken > 300 and refused_but_valid < 0.3 * taken, (taken, refused_but_valid)


def test_the_structs_take_every_line_of_the_canonical_events():
    _, _, decode_known = fast_lines.readers()
    assert decode_known is not None
    for kind, base in CANONICAL.items():
        assert decode_known(_line(kind, base)) is not None, kind
    assert decode_known(_line("meta", {"layers": []})) is None  # kinds without a struct: the generic path
    assert decode_known(b'{"kind":"step","v":1,"step":1}') is None  # not as the probe writes it: the generic path


def test_the_plain_step_check_is_a_sufficient_condition_of_the_walk():
    """``schema._plain_step`` (the check without msgspec) says yes only where the field walk finds nothing wrong."""
    plain = 0
    for _, what, line in _variants({"step": {**CANONICAL["step"], "params": {"w": 0.5, "b": 0.25}}}):  # no encoded NaN
        event = json.loads(line)
        if schema._plain_step(event):
            plain += 1
            assert schema._walk(event) is None, what
    assert plain > 100


@pytest.mark.parametrize(
    "module", [nn.LSTM, nn.GRU, lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k)], ids=["LSTM", "GRU", "RNN_RELU"]
)
def test_every_step_deep_and_saturation_line_a_probe_writes_takes_the_fast_path(tmp_path, module):
    """A field the probe starts writing must be added to the struct of its kind, or reading its logs slows down."""
    torch.manual_seed(0)
    rnn, head = module(4, 8, num_layers=2, bidirectional=True), nn.Linear(16, 1)
    model = nn.ModuleDict({"rnn": rnn, "head": head})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    log = tmp_path / "run.log"
    with gradprobe.attach(model, log=log, every=2, optimizer=optimizer, config={}) as probe:
        for _ in range(4):
            output, _ = rnn(torch.randn(6, 3, 4))
            loss = head(output).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            probe.step(loss)
    _, _, decode_known = fast_lines.readers()
    assert decode_known is not None
    seen: dict[str, int] = {}
    for line in log.read_bytes().splitlines():
        kind = json.loads(line)["kind"]
        if kind in CANONICAL:
            assert decode_known(line) is not None, line[:200]
            seen[kind] = seen.get(kind, 0) + 1
    assert seen.keys() == CANONICAL.keys(), seen


def test_the_structs_judge_alike_where_the_cpu_flushes_denormals():
    """msgspec checks ``gt=0.0`` as ``>=`` the smallest denormal: 0 where denormals are flushed (``gradprobe demo`` does so)."""
    _, _, decode_known = fast_lines.readers()
    assert decode_known is not None
    line = _line("deep", {**CANONICAL["deep"], "epsilon": 0})
    previous = _flushing_denormals()
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals (no SSE3)")
    try:
        assert decode_known(line) is None
    finally:
        torch.set_flush_denormal(previous)
