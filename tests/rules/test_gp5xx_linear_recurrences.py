"""GP501-GP505 on linear recurrences: each broken twin caught, the healthy default initialization silent."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.hookspecs import hookimpl
from gradprobe.plugins import make_plugin_manager
from gradprobe.probe import Probe, ProbeSettings
from gradprobe.recurrence_adapter import RecurrenceAdapter
from gradprobe.reference import LRU, MinGRU
from gradprobe.rules.engine import RuleEngine


class Model(nn.Module):
    def __init__(self, layer: nn.Module, width: int) -> None:
        super().__init__()
        self.layer = layer
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x))[:, -1, 0]


def train(model: nn.Module, steps: int, length: int, every: int = 4, lag: int = 3, **kw: Any) -> list[Any]:
    """A recall task: the target is the first input feature ``lag`` steps before the end."""
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    with gradprobe.attach(model, every=every, optimizer=opt, **kw) as probe:
        for _ in range(steps):
            x = torch.randn(16, length, 4)
            loss = (model(x) - x[:, -1 - lag, 0]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.findings


def serious(findings: list[Any]) -> list[str]:
    return [str(f) for f in findings if f.severity != "info"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_lru_and_mingru_are_silent(seed: int) -> None:
    torch.manual_seed(seed)
    lru = Model(LRU(4, 32), 4)
    assert serious(gradprobe.lint(lru)) == []
    assert serious(train(lru, 24, 32)) == []
    gru = nn.Sequential(MinGRU(4, 16), nn.Linear(16, 1))  # a per-step loss: the previous step's first feature
    assert serious(gradprobe.lint(gru)) == []
    opt = torch.optim.Adam(gru.parameters(), 3e-3)
    with gradprobe.attach(gru, every=4, optimizer=opt) as probe:
        for _ in range(24):
            x = torch.randn(16, 32, 4)
            loss = (gru(x)[:, 1:, 0] - x[:, :-1, 0]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert serious(probe.findings) == []


def test_gp501_a_collapsed_ring_short_of_a_declared_need_warns_and_the_ring_fix_mends_it() -> None:
    torch.manual_seed(0)
    model = Model(LRU(4, 16), 4)
    model.layer.set_ring(0.5)
    findings = train(model, 12, 48, dependency_length=40)
    gp501 = next(f for f in findings if f.code == "GP501")
    assert gp501.severity in ("warning", "error") and "the task needs" in gp501.message
    assert gp501.evidence["top_decay"] == pytest.approx(0.5, rel=0.05)
    assert [fix.action for fix in gp501.fixes] == ["lru-ring-init"]
    assert not any(f.code == "GP101" for f in findings)  # GP501 speaks for linear recurrences
    applied = gradprobe.fixes.apply(model, findings)
    assert [a.action_id for a in applied] == ["lru-ring-init"]
    radii = model.layer.eigenvalues().abs()
    assert bool(((radii >= 0.9 - 1e-6) & (radii <= gp501.fixes[0].params["r_max"] + 1e-6)).all())
    after = gradprobe.check(model, torch.randn(8, 48, 4), dependency_length=40)
    assert not [f for f in after.findings if f.code == "GP501" and f.severity != "info"]


def test_gp502_memory_far_beyond_a_short_training_length() -> None:
    torch.manual_seed(0)
    model = Model(LRU(4, 16, r_min=0.999, r_max=0.9999), 4)
    found = {f.code: f for f in train(model, 12, 10)}
    assert found["GP502"].severity == "warning"
    assert found["GP502"].evidence["median_time_constant"] > 100 and found["GP502"].evidence["seq_len"] == 10
    once = {f.code: f for f in gradprobe.check(model, torch.randn(4, 10, 4)).findings}
    assert once["GP502"].severity == "info"  # one deep probe: no persistence yet
    torch.manual_seed(0)
    trained_long = Model(LRU(4, 16, r_min=0.999, r_max=0.9999), 4)
    assert not any(f.code == "GP502" for f in train(trained_long, 8, 400, every=4))


def test_gp503_and_gp505_an_lru_at_radius_one_on_long_sequences() -> None:
    torch.manual_seed(0)
    model = Model(LRU(4, 16), 4)
    model.layer.set_ring(1.0)
    lint = {f.code: f for f in gradprobe.lint(model)}
    assert lint["GP505"].severity == "warning" and "pinned at 1" in lint["GP505"].message
    found = {f.code: f for f in train(model, 8, 200)}
    assert found["GP503"].severity == "warning"
    assert found["GP503"].evidence["top_decay"] == pytest.approx(1.0)
    assert [fix.action for fix in found["GP503"].fixes] == ["lru-ring-init", "clip-grad-norm-auto"]


def test_gp505_an_input_gain_far_from_the_normalization() -> None:
    torch.manual_seed(0)
    model = Model(LRU(4, 16, r_min=0.99, r_max=0.999), 4)
    with torch.no_grad():
        model.layer.gamma_log.zero_()  # gamma = 1 where sqrt(1 - r^2) ~ 0.1
    lint = {f.code: f for f in gradprobe.lint(model)}
    assert lint["GP505"].severity == "warning" and lint["GP505"].evidence["gain_ratio"] > 4


class Decay(nn.Module):
    """A user's own diagonal recurrence with a decay it sets: h_t = a * h_(t-1) + x_t."""

    def __init__(self, decay: float) -> None:
        super().__init__()
        self.decay = nn.Parameter(torch.full((4,), decay))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, out = torch.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            h = self.decay * h + x[:, t]
            out.append(h)
        return torch.stack(out, dim=1)


class DecayPlugin:
    @hookimpl
    def gradprobe_recurrence(self, module: nn.Module) -> RecurrenceAdapter | None:
        if isinstance(module, Decay):
            return RecurrenceAdapter(
                "decay",
                lambda m, args, kwargs: m.decay.expand(args[0].shape[0], args[0].shape[1], -1),
                static_decays=lambda m: m.decay,
            )
        return None


def run_with_plugin(decay: float, steps: int = 3, length: int = 20) -> tuple[list[Any], list[dict]]:
    pm = make_plugin_manager(load_entry_points=False)
    pm.add(DecayPlugin(), "decay-plugin", "test")
    model = Model(Decay(decay), 4)
    events: list[dict] = []
    with Probe(
        model, settings=ProbeSettings(every=1), rules=RuleEngine({}, plugin_manager=pm), sinks=[events.append]
    ) as probe:
        for _ in range(steps):
            model(torch.randn(2, length, 4)).sum().backward()
            probe.step()
    return probe.findings, events


def test_a_plugin_adapter_claims_a_users_layer_and_gp503_errors_on_a_decay_above_one() -> None:
    findings, events = run_with_plugin(1.02)
    meta = next(e for e in events if e["kind"] == "meta")
    assert meta["layers"][0]["recurrence"] == "decay"
    deep = next(e for e in events if e["kind"] == "deep")
    assert deep["profile"][5] == pytest.approx(1.02**5, rel=1e-6)
    found = {f.code: f for f in findings}
    assert found["GP503"].severity == "error" and "grows" in found["GP503"].message


def test_gp504_non_finite_decays_are_named_on_the_layer() -> None:
    findings, events = run_with_plugin(math.nan, steps=1)
    recurrence = next(e for e in events if e["kind"] == "recurrence")
    assert recurrence["nonfinite"] == 2 * 20 * 4
    assert not [e for e in events if e["kind"] == "deep"]  # nothing to measure on NaN decays
    found = {f.code: f for f in findings}
    assert found["GP504"].severity == "error" and found["GP504"].layer == "layer"


def test_without_the_adapter_the_users_layer_is_not_recurrent() -> None:
    with pytest.raises(gradprobe.NotRecurrentError):
        gradprobe.attach(Model(Decay(0.9), 4))


def test_gp502_the_flagged_memory_is_the_one_that_fails_on_longer_sequences() -> None:
    """Why GP502 warns: two deep LRUs learn the same 8-step recall task perfectly; the one whose channels
    remember ~1,000-10,000 steps (flagged) recalls worse on 128-step sequences than one whose memory fits the
    training length (silent). Measured at 3 seeds: 0.32-0.37 against 0.61-0.63 (chance 0.125)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "corpus"))
    from lru_recall import SYMBOLS, DeepLRU  # type: ignore[import-not-found]

    def trained(ring: tuple[float, float]) -> tuple[dict[int, float], set[str]]:
        torch.manual_seed(0)
        data = torch.Generator().manual_seed(int(torch.initial_seed()) + 3)
        model = DeepLRU(ring)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
        with gradprobe.attach(model, every=25, optimizer=opt, config={}) as probe:
            for _ in range(300):
                tokens = torch.randint(0, SYMBOLS, (32, 8), generator=data)
                loss = nn.functional.cross_entropy(model(tokens), tokens[:, 0])
                opt.zero_grad()
                loss.backward()
                opt.step()
        accuracy = {}
        with torch.no_grad():
            for length in (8, 128):
                tokens = torch.randint(0, SYMBOLS, (512, length), generator=data)
                accuracy[length] = float((model(tokens).argmax(-1) == tokens[:, length - 8]).float().mean())
        return accuracy, {f.code for f in probe.findings if f.severity != "info"}

    long_memory, flagged = trained((0.999, 0.9999))
    fitted, silent = trained((0.5, 0.85))
    assert "GP502" in flagged and "GP502" not in silent
    assert long_memory[8] >= 0.95 and fitted[8] >= 0.95  # both learned the task they were trained on
    assert long_memory[128] < fitted[128] - 0.15, (long_memory, fitted)


class BrokenPlugin:
    """An adapter whose reading fails: it raises, or returns decays of the wrong shape."""

    def __init__(self, how: str) -> None:
        self.how = how

    @hookimpl
    def gradprobe_recurrence(self, module: nn.Module) -> RecurrenceAdapter | None:
        if not isinstance(module, Decay):
            return None

        def transition(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
            if self.how == "raises":
                raise RuntimeError("cannot read this layer")
            return m.decay  # [N]: no batch, no time

        def static(m: nn.Module) -> torch.Tensor:
            raise RuntimeError("no static reading")

        return RecurrenceAdapter("broken", transition, static_decays=static)


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)
        self.layer = Decay(0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.lstm(x)[0])


@pytest.mark.parametrize("how", ["raises", "wrong-shape"])
def test_a_failing_adapter_leaves_its_layer_not_measured_and_nothing_else(how: str) -> None:
    torch.manual_seed(0)
    pm = make_plugin_manager(load_entry_points=False)
    pm.add(BrokenPlugin(how), "broken-plugin", "test")
    model, twin = WithLSTM(), WithLSTM()
    twin.load_state_dict(model.state_dict())
    events: list[dict] = []
    x = torch.randn(2, 12, 4)
    with pytest.warns(gradprobe.GradprobeWarning, match="stopped measuring layer") as caught:
        with Probe(
            model, settings=ProbeSettings(every=1), rules=RuleEngine({}, plugin_manager=pm), sinks=[events.append]
        ) as probe:
            for _ in range(3):
                model(x).sum().backward()
                probe.step()
    assert len([w for w in caught if "stopped measuring" in str(w.message)]) == 1  # once
    assert probe.error is None  # the probe went on
    twin(x).sum().backward()
    twin(x).sum().backward()
    twin(x).sum().backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad)  # training untouched
    found = {(f.code, f.layer): f for f in probe.findings}
    assert found[("GP001", "layer")].severity == "warning"
    assert "'broken' recurrence adapter failed" in found[("GP001", "layer")].message
    assert ("GP001", "lstm") not in found and any(e["kind"] == "deep" and e["layer"] == "lstm.l0" for e in events)
    assert [e["part"] for e in events if e["kind"] == "fault"] == ["the recurrence adapter of layer"]
    lint = {(f.code, f.layer): f for f in RuleEngine({}, plugin_manager=pm).lint(model, probe_sites(pm, model))}
    assert lint[("GP505", "layer")].severity == "info" and "not checked" in lint[("GP505", "layer")].message


def probe_sites(pm: Any, model: nn.Module) -> list[Any]:
    from gradprobe.discovery import adapters_from, find_recurrent

    return find_recurrent(model, (), adapters_from(RuleEngine({}, plugin_manager=pm).call_hook))
