"""every="auto": deep and sampled steps spaced from measured costs so that their extra time stays within budget."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.quantities import BudgetSchedule
from gradprobe.recorders.capture import DEEP, OFF, SAMPLE


class FakeClock:
    """Steps cost ``plain`` seconds, plus ``extra[mode]`` on deep and sampled steps and ``cheap`` of recording."""

    def __init__(self, plain: float, extra: dict[str, float], cheap: float = 0.0) -> None:
        self.now, self.plain, self.extra, self.cheap = 0.0, plain, extra, cheap

    def __call__(self) -> float:
        return self.now

    def run(
        self,
        schedule: BudgetSchedule,
        steps: int,
        first_deep_extra: float | None = None,
        pauses: dict[int, float] | None = None,
    ) -> list[dict]:
        """``pauses``: seconds spent after a step, outside training and the probe (an evaluation)."""
        chosen, modes = [], []
        schedule.start()
        for step in range(steps):
            mode = schedule.mode_for(step)
            modes.append(mode)
            extra = self.extra.get(mode, 0.0)
            if step == 0 and first_deep_extra is not None:
                extra = first_deep_extra  # the one-off warm-up of the first deep probe
            hooks = 0.05 * extra  # a little of the extra in the capture's hooks, the rest in probe.step
            self.now += self.plain + self.cheap + extra + (pauses or {}).get(step - 1, 0.0)
            event = schedule.observe(step, mode, probe_seconds=self.cheap + extra - hooks)
            if event is not None:
                chosen.append(event)
        self.modes = modes
        return chosen


def test_intervals_follow_from_the_measured_costs():
    """10 ms plain steps, +60 ms deep, +2 ms sampled, budget 3%: 0.3 ms a step to spend."""
    clock = FakeClock(0.010, {DEEP: 0.060, SAMPLE: 0.002})
    schedule = BudgetSchedule(0.03, saturation_every=20, clock=clock)
    chosen = clock.run(schedule, 3000, first_deep_extra=0.5)
    # sampling: a third of the budget (0.1 ms a step) -> every 20 steps; deep steps: the other 0.2 ms -> every 300
    assert schedule.saturation_every == 20 and schedule.every == 300
    assert chosen[-1]["every"] == 300 and chosen[-1]["expected_overhead"] == pytest.approx(0.03, rel=1e-6)
    deep_steps = [s for s, m in enumerate(clock.modes) if m == DEEP]
    assert deep_steps[:2] == [0, 9]  # the warm-up deep step, 8 plain steps, a deep step to measure
    settled = chosen[-1]["step"]  # re-chosen at a deep step once sampling was measured too
    after = [s for s in deep_steps if s >= settled]
    assert len(after) >= 8 and all(b - a == 300 for a, b in itertools.pairwise(after))
    spent = sum(clock.extra.get(m, 0.0) for m in clock.modes[settled + 1 :])
    assert spent / (clock.plain * (3000 - settled - 1)) <= 0.03 * 1.05  # the overhead keeps the budget


def test_costly_sampling_is_spaced_out_too():
    clock = FakeClock(0.010, {DEEP: 0.030, SAMPLE: 0.004})
    schedule = BudgetSchedule(0.03, saturation_every=20, clock=clock)
    clock.run(schedule, 2000)
    assert schedule.saturation_every == 40  # 4 ms / (a third of 0.3 ms)
    assert schedule.every == 150  # 30 ms / (0.3 ms - 4 ms / 40)


def test_the_cheap_recording_counts_against_the_budget():
    """0.1 ms of recording on every 10 ms step leaves 0.2 ms of a 3% budget for deep steps of +60 ms."""
    clock = FakeClock(0.010, {DEEP: 0.060}, cheap=0.0001)
    schedule = BudgetSchedule(0.03, saturation_every=0, clock=clock)
    chosen = clock.run(schedule, 1000)
    assert schedule.every == 300 and chosen[-1]["cheap_ms"] == pytest.approx(0.1)
    assert chosen[-1]["expected_overhead"] == pytest.approx(0.03) and chosen[-1]["over_budget"] is False


def test_over_budget_from_the_recording_alone_says_so():
    clock = FakeClock(0.010, {DEEP: 0.060, SAMPLE: 0.002}, cheap=0.0005)  # 5% on every step, budget 3%
    schedule = BudgetSchedule(0.03, saturation_every=20, clock=clock)
    chosen = clock.run(schedule, 200)
    assert chosen[-1]["over_budget"] is True and schedule.every == BudgetSchedule.MAX_EVERY
    assert chosen[-1]["expected_overhead"] == pytest.approx(0.05, rel=0.01)


def test_the_first_deep_steps_warmup_is_left_out():
    clock = FakeClock(0.010, {DEEP: 0.020})
    schedule = BudgetSchedule(0.05, saturation_every=0, clock=clock)
    chosen = clock.run(schedule, 400, first_deep_extra=2.0)
    assert [s for s, m in enumerate(clock.modes) if m == DEEP][:2] == [
        0,
        9,
    ]  # warm-up, 8 plain steps, a measured deep step
    assert chosen[0]["step"] == 9 and chosen[0]["every"] == 40 == schedule.every  # 20 ms / 0.5 ms, not 2 s / 0.5 ms


def test_pauses_between_steps_are_not_taken_for_probe_time():
    """A 5 s evaluation before the first measured deep step, a sampled and a plain step leaves the intervals
    of test_intervals_follow_from_the_measured_costs, from the first choice on."""
    clock = FakeClock(0.010, {DEEP: 0.060, SAMPLE: 0.002})
    schedule = BudgetSchedule(0.03, saturation_every=20, clock=clock)
    chosen = clock.run(schedule, 3000, first_deep_extra=0.5, pauses={8: 5.0, 19: 5.0, 40: 5.0})
    assert [clock.modes[s] for s in (9, 20, 41)] == [DEEP, SAMPLE, OFF]
    # the pause counts for at most half a plain step (5 ms), not 5 s
    assert chosen[0]["step"] == 9 and 60.0 <= chosen[0]["deep_extra_ms"] <= 60.0 + 5.0 + 1e-9
    assert schedule.saturation_every == 20 and schedule.every == 300
    assert chosen[-1]["sample_extra_ms"] == pytest.approx(2.0)


def test_a_real_run_chooses_and_says_so(tmp_path):
    torch.manual_seed(0)
    model = nn.LSTM(8, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log = tmp_path / "run.log"
    with gradprobe.attach(model, log=log, every="auto", budget=0.05, optimizer=opt, config={}) as probe:
        for _ in range(40):
            opt.zero_grad()
            model(torch.randn(20, 4, 8))[0].pow(2).mean().backward()
            opt.step()
    from gradprobe.events import iter_events

    events = list(iter_events(log))
    chosen = [e for e in events if e["kind"] == "schedule"]
    assert chosen and chosen[-1]["every"] == probe.every >= 1
    assert chosen[0]["step"] >= 8  # after the warm-up of plain steps
    deep = [e["step"] for e in events if e["kind"] == "deep"]
    assert deep[0] == 0
    meta = events[0]
    assert meta["settings"]["every"] == "auto" and meta["settings"]["budget"] == 0.05


def test_bad_every_and_budget_are_refused():
    with pytest.raises(ValueError, match="every"):
        gradprobe.attach(nn.GRU(2, 2), every="sometimes", config={})
    with pytest.raises(ValueError, match="budget"):
        gradprobe.attach(nn.GRU(2, 2), every="auto", budget=1.5, config={})
    assert OFF == "off"


@pytest.mark.parametrize("slow_part", ["forward hook", "end of backward"])
def test_the_budget_clock_prices_every_part_of_the_probe(tmp_path, monkeypatch, slow_part):
    """The cheap recording's price covers every hook of the probe, not only the optimizer-step recording: a part
    made 3 ms slower shows in cheap_ms, and a cheap recording alone over the budget says over_budget."""
    from gradprobe.events import iter_events
    from gradprobe.recorders import capture, gradients

    target, name = (
        (capture.CallCapture, "_record") if slow_part == "forward hook" else (gradients.GradientRecorder, "measure")
    )
    original = getattr(target, name)

    def slow(self, *args, **kwargs):
        until = time.perf_counter() + 0.003
        while time.perf_counter() < until:
            pass
        return original(self, *args, **kwargs)

    monkeypatch.setattr(target, name, slow)
    torch.manual_seed(0)
    model = nn.LSTM(8, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log = tmp_path / "run.log"
    with gradprobe.attach(model, log=log, every="auto", budget=0.03, optimizer=opt, config={}):
        for _ in range(30):
            opt.zero_grad()
            model(torch.randn(10, 2, 8))[0].pow(2).mean().backward()
            opt.step()
    chosen = [e for e in iter_events(log) if e["kind"] == "schedule"]
    assert chosen and chosen[0]["cheap_ms"] >= 3.0, chosen[0]
    assert chosen[0]["over_budget"] is True and chosen[0]["expected_overhead"] > 0.03
