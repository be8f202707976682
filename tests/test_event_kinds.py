"""One definition per event kind: the probe writes only what it declares, and the docs are generated from it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

import gradprobe
from gradprobe import schema
from gradprobe.event_kinds import KINDS, URGENT, FieldType, markdown
from gradprobe.events import EventWriter

ROOT = Path(__file__).resolve().parents[1]


class CellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(2, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[1], 6)
        for x_t in x:
            h = self.cell(x_t, h)
        return h


class WholeSequence(nn.Module):
    """A module that loops over the sequence inside one call (measured at the sequence level)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.RNNCell(2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[1], 5)
        out = []
        for x_t in x:
            h = self.inner(x_t, h)
            out.append(h)
        return torch.stack(out)


def _events_of_runs() -> list[dict]:
    """Events of runs that between them write every kind the probe writes in training."""
    events: list[dict] = []
    torch.manual_seed(0)
    lstm = nn.LSTM(2, 8)
    opt = torch.optim.SGD(lstm.parameters(), lr=5.0)  # large: the loss climbs, the fixer clips
    with gradprobe.attach(
        lstm, every="auto", fix="auto", optimizer=opt, config={}, sinks=[events.append], truncation=None
    ) as probe:
        state = None
        for step in range(40):
            opt.zero_grad()
            out, state = lstm(torch.randn(12, 4, 2) * (1 + step), state)
            out.pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(lstm.parameters(), 1.0)
            opt.step()
            state = tuple(s.detach() for s in state)
        probe.log_fix("clip_hidden", detail={"threshold": 1.0})
    cells = CellLoop()
    with gradprobe.attach(cells, every=2, config={}, sinks=[events.append]) as probe:
        for _ in range(3):
            cells(torch.randn(7, 3, 2)).sum().backward()
            probe.step(torch.tensor(1.0))
    whole = WholeSequence()
    with gradprobe.attach(whole, every=1, cells=["inner", whole], config={}, sinks=[events.append]) as probe:
        whole(torch.randn(9, 2, 2)).sum().backward()
        probe.step()
    unused = nn.Sequential(nn.GRU(2, 3), nn.GRU(3, 3))
    with gradprobe.attach(unused, every=1, config={}, sinks=[events.append]) as probe:
        out, _ = unused[0](torch.randn(4, 2, 2))  # the second GRU never runs: unmeasured
        out.sum().backward()
        probe.step()
    return events


def test_the_probe_writes_only_declared_kinds_and_fields():
    events = _events_of_runs()
    written = {e["kind"] for e in events}
    assert {"meta", "step", "deep", "saturation", "unmeasured", "loop", "schedule", "fix", "finding"} <= written
    for event in events:
        spec = KINDS[event["kind"]]
        undeclared = set(event) - {"kind"} - {f.name for f in spec.fields}
        assert not undeclared, f"{event['kind']} event with undeclared fields {undeclared}"
        missing = [f.name for f in spec.fields if f.required and event.get(f.name) is None]
        assert not missing, f"{event['kind']} event without {missing}"
        assert schema.problem(event) is None, (event["kind"], schema.problem(event))


def test_the_schema_checks_come_from_the_definitions():
    for kind, spec in KINDS.items():
        checked = schema.FIELDS[kind]
        assert set(checked) == {f.name for f in spec.fields if f.type is not FieldType.ANY}
        for f in spec.fields:
            if f.name in checked:
                assert checked[f.name][1] is f.required
    assert EventWriter.URGENT == URGENT == {"meta", "deep", "recurrence", "fix", "finding", "error"}
    # a declared type is enforced: a deep event whose horizon is negative does not fit
    assert schema.problem({"kind": "deep", "layer": "x", "step": 0, "horizon": -1.0}) is not None
    assert schema.problem({"kind": "deep", "layer": "x", "step": 0, "horizon": "inf"}) is None


def test_the_events_reference_page_is_generated_from_the_definitions():
    page = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    assert page == markdown(), "docs/events.md is stale: python -m gradprobe.event_kinds > docs/events.md"
    for kind in KINDS:
        assert f"## `{kind}`" in page


def test_events_are_read_only_once_published():
    """A sink that changes an event is switched off alone; the log, the rules and the other sinks see it as sent."""
    import pytest

    from gradprobe import GradprobeWarning

    def meddling(event: dict) -> None:
        if event["kind"] == "step":
            event["loss"] = 0.0

    seen: list[dict] = []
    torch.manual_seed(0)
    model = nn.GRU(2, 4)
    with pytest.warns(GradprobeWarning, match="switched off sink .*meddling.*read-only"):
        with gradprobe.attach(model, every=1, config={}, sinks=[meddling, seen.append]) as probe:
            out, _ = model(torch.randn(5, 2, 2))
            loss = out.pow(2).mean()
            loss.backward()
            probe.step(loss)
    (step,) = [e for e in seen if e["kind"] == "step"]
    assert step["loss"] == pytest.approx(loss.item())
    assert any(part.endswith("meddling") and "read-only" in why for part, why in probe.faults.items())
    assert dict(step) == step and json.loads(json.dumps(step))["kind"] == "step"  # still a dict to every reader
