"""Quantities: each declares what it needs captured, the probe captures the union and hands a frozen record."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from gradprobe.probe import Probe, ProbeSettings
from gradprobe.quantities.base import Quantity, QuantitySetup, StepContext
from gradprobe.quantities.deep_profile import DeepProfile
from gradprobe.quantities.registry import BUILT_IN
from gradprobe.quantities.truncation import TruncationWindows
from gradprobe.recorders.capture import DEEP, OFF, SAMPLE, StepRecord
from gradprobe.rules.engine import RuleEngine


class CountsDeepCalls(Quantity):
    """A quantity written as a user would: its own class, its needs, its constructor taking the setup."""

    modes = frozenset({DEEP})

    def __init__(self, setup: QuantitySetup) -> None:
        self.sites = [site.name for site in setup.sites]
        self.seen: list[tuple[int, str, int]] = []

    def compute(self, context: StepContext) -> None:
        for name in self.sites:
            chain = context.record.stack_calls.get(name, [])
            self.seen.append((context.step, context.mode.value, len(chain)))
        context.emit("loop", step=context.step, layer=self.sites[0], truncation=7)


def _run(quantities, steps=4, every=2, saturation_every=1, sinks=()):
    torch.manual_seed(0)
    model = nn.LSTM(2, 6)
    settings = ProbeSettings(every=every, saturation_every=saturation_every)
    with Probe(model, settings=settings, rules=RuleEngine({}), quantities=quantities, sinks=sinks) as probe:
        modes = []
        for _ in range(steps):
            modes.append(probe._capture.mode)
            out, _ = model(torch.randn(10, 3, 2))
            out.sum().backward()
            probe.step()
    return probe, modes


def test_a_new_quantity_is_one_class_plus_its_registration():
    events: list[dict] = []
    probe, _ = _run((*BUILT_IN, CountsDeepCalls), sinks=[events.append])
    counter = probe.quantity(CountsDeepCalls)
    assert counter is not None
    assert counter.seen == [(0, "deep", 1), (2, "deep", 1)]  # deep steps only, one captured call each
    assert [e["step"] for e in events if e["kind"] == "loop" and e["truncation"] == 7] == [0, 2]  # its events go out
    assert set(probe.layers) == {"LSTM.l0"}  # the built-ins went on measuring beside it


def test_the_capture_is_as_deep_as_some_quantity_needs():
    _, modes = _run(BUILT_IN)
    assert modes == [DEEP, SAMPLE, DEEP, SAMPLE]  # saturation sampling asks for sampled steps
    _, modes = _run((DeepProfile, TruncationWindows))
    assert modes == [DEEP, OFF, DEEP, OFF]  # nobody needs sampled steps: none is captured


def test_the_step_record_is_frozen():
    captured: list[StepRecord] = []

    class Keeps(Quantity):
        modes = frozenset({DEEP})

        def __init__(self, setup: QuantitySetup) -> None:
            pass

        def compute(self, context: StepContext) -> None:
            captured.append(context.record)

    _run((Keeps,), steps=1)
    record = captured[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.mode = OFF  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.stack_calls["x"] = []  # type: ignore[index]
    assert len(record.stack_calls) == 1 and record.mode is DEEP


def test_the_capture_keeps_nothing_while_paused():
    torch.manual_seed(0)
    model = nn.GRU(2, 4)
    with Probe(model, settings=ProbeSettings(every=1), rules=RuleEngine({})) as probe:
        capture = probe._capture
        with capture.paused():
            model(torch.randn(5, 2, 2))
            assert capture.take().stack_calls == {}
        model(torch.randn(5, 2, 2))
        assert len(capture.take().stack_calls) == 1
