"""One options object for every entry point: lint, check, attach, the pytest marker and fixture."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.config import ConfigError, Options
from gradprobe.events import iter_events
from gradprobe.testing import assert_healthy


def _rnn() -> nn.RNN:
    torch.manual_seed(0)
    return nn.RNN(2, 8)


def _train(probe: gradprobe.Probe, model: nn.RNN, steps: int = 2) -> None:
    for _ in range(steps):
        out, _ = model(torch.randn(20, 3, 2))
        out.pow(2).mean().backward()
        probe.step()


def test_attach_takes_the_rule_keywords_lint_and_check_take(tmp_path):
    model = _rnn()
    log = tmp_path / "run.log"
    keywords = {"thresholds": {"GP101": {"min_horizon_fraction": 0.5}}, "ignore": ["GP203"], "fail_on": "error"}
    with gradprobe.attach(model, log=log, every=1, config={}, **keywords) as probe:
        _train(probe, model)
    meta = next(e for e in iter_events(log) if e["kind"] == "meta")
    assert meta["config"] == {
        "thresholds": {"GP101": {"min_horizon_fraction": 0.5}},
        "ignore": ["GP203"],
        "fail-on": "error",
    }
    assert all(f.code != "GP203" for f in probe.findings)
    assert gradprobe.lint(model, config={}, **keywords) == gradprobe.lint(model, options=Options(config={}, **keywords))
    report = gradprobe.check(model, torch.randn(20, 3, 2), config={}, **keywords)
    assert report.fail_on == "error" and all(f.code != "GP203" for f in report.findings)


def test_keywords_win_over_the_options_object():
    base = Options(ignore=("GP203",), dependency_length=50, fail_on="error")
    mixed = Options.of(base, dependency_length=80, ignore=(), fail_on=None)
    assert mixed == Options(ignore=("GP203",), dependency_length=80, fail_on="error")
    assert Options.of(None) == Options()
    assert Options(
        config={}, thresholds={"GP101": {"min_horizon_fraction": 0.5}}, ignore=("GP203",)
    ).rule_config().to_dict() == {
        "thresholds": {"GP101": {"min_horizon_fraction": 0.5}},
        "ignore": ["GP203"],
        "fail-on": "warning",
    }


def test_bad_options_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="fail_on must be info, warning or error"):
        Options(fail_on="fatal")
    with pytest.raises(ConfigError, match="ignore must be a list of rule codes"):
        Options(ignore="GP101")  # type: ignore[arg-type]


def test_a_declared_need_is_used_by_the_rules_of_every_entry_point():
    torch.manual_seed(0)
    model = nn.RNN(1, 16)  # default init: a horizon of a few steps
    x = torch.randn(200, 4, 1)
    from_check = {f.code for f in gradprobe.check(model, x, config={}, dependency_length=200).findings}
    from_options = {
        f.code for f in gradprobe.check(model, x, options=Options(config={}, dependency_length=200)).findings
    }
    assert "GP101" in from_check and from_check == from_options


@pytest.mark.parametrize(
    ("call", "old", "new"),
    [
        (lambda m: gradprobe.attach(m, config={}, seq_len=30).close(), "seq_len", "dependency_length"),
        (lambda m: gradprobe.check(m, torch.randn(5, 2, 2), config={}, seq_len=30), "seq_len", "dependency_length"),
        (
            lambda m: assert_healthy(m, torch.randn(5, 2, 2), config={}, horizon=3, allow=["GP101", "GP201"]),
            "horizon",
            "dependency_length",
        ),
    ],
)
def test_old_names_still_work_and_warn(call, old, new):
    with pytest.warns(DeprecationWarning, match=f"{old}= is deprecated, use {new}=") as caught:
        call(_rnn())
    assert caught[0].filename == __file__  # the warning points at the caller's line


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        gradprobe.attach(_rnn(), config={}, dependency_length=30).close()


def test_shared_signals_belong_to_no_rule_and_are_set_in_one_place():
    from gradprobe.config import SIGNALS, from_mapping
    from gradprobe.rules.engine import RuleEngine

    engine = RuleEngine(from_mapping({"signals": {"loss_rise": 0.5}}))
    assert (
        engine.context.run.signals.loss_rise == 0.5
        and engine.context.run.signals.spike_factor == SIGNALS["spike_factor"]
    )
    assert engine.config.to_dict()["signals"] == {"loss_rise": 0.5}  # recorded in the meta event, re-judged alike
    engine = RuleEngine(Options(config={}, signals={"min_spikes": 5}).rule_config())
    assert engine.context.run.signals.min_spikes == 5
    with pytest.raises(ConfigError, match="unknown signal 'loss_climb'"):
        from_mapping({"signals": {"loss_climb": 1.0}})
    for rule in engine.registry.sorted():  # each rule owns only its thresholds; what several read is a signal
        assert not set(rule.thresholds) & set(SIGNALS), rule.code
    gp403 = engine.registry["GP403"]
    assert gp403.signals == ("loss_rise",) and "`loss_rise`" in gp403.doc()


def test_an_old_threshold_of_a_shared_signal_warns_and_moves():
    with pytest.warns(DeprecationWarning, match=r"GP403.rise is deprecated, use signals.loss_rise"):
        config = Options(config={}, thresholds={"GP403": {"rise": 0.5}, "GP101": {"min_horizon_fraction": 0.5}})
        moved = config.rule_config()
    assert moved.signals == {"loss_rise": 0.5} and moved.thresholds == {"GP101": {"min_horizon_fraction": 0.5}}
