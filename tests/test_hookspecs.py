"""Every hookspec is documented like pytest's and implemented by at least one built-in plugin."""

from __future__ import annotations

import importlib
import inspect

import pytest

from gradprobe import GradprobeWarning, hookspecs
from gradprobe.plugins import make_plugin_manager
from gradprobe.rules.engine import RuleEngine

SPECS = [name for name in dir(hookspecs) if name.startswith("gradprobe_")]


def test_every_hookspec_is_documented():
    assert SPECS
    for name in SPECS:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        assert doc, name
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name} does not document {param}"


def test_every_hookspec_is_exercised(tmp_path):
    pm = make_plugin_manager(load_entry_points=False)
    implemented = {impl.plugin_name: impl for name in SPECS for impl in pm.hook.__dict__[name].get_hookimpls()}
    covered = {name for name in SPECS if pm.hook.__dict__[name].get_hookimpls()}
    # gradprobe_event_written is for sinks: the built-ins have none; the TensorBoard plugin and the test below use it.
    # gradprobe_recurrence claims layers gradprobe does not know: its own are found without a hook; the
    # gradprobe-transformers plugin implements it (tests/rules/test_gp5xx_linear_recurrences.py registers one too)
    assert covered | {"gradprobe_event_written", "gradprobe_recurrence"} == set(SPECS), implemented
    seen = []

    class Sink:
        @hookspecs.hookimpl
        def gradprobe_event_written(self, event):
            seen.append(event["kind"])

    import torch

    import gradprobe
    from gradprobe.probe import Probe, ProbeSettings
    from gradprobe.rules.engine import RuleEngine

    pm.register(Sink())
    model = torch.nn.GRU(2, 3)
    with Probe(model, settings=ProbeSettings(every=1), rules=RuleEngine({}, plugin_manager=pm)) as probe:
        model(torch.randn(4, 1, 2))[0].sum().backward()
        probe.step()
    assert seen[:2] == ["meta", "step"] and "deep" in seen
    assert gradprobe.__version__


def test_hook_calls_follow_plugins_registered_switched_off_and_removed_between_calls():
    """The manager keeps each hook's implementations between calls; registering or removing a plugin renews them."""
    engine = RuleEngine({})
    pm, context = engine.pm, engine.context
    event = {"v": 1, "kind": "step", "step": 0}
    seen: list[str] = []

    class Recorder:
        @hookspecs.hookimpl
        def gradprobe_observe(self, event, context):
            seen.append("recorder")

    class Broken:
        @hookspecs.hookimpl
        def gradprobe_observe(self, event, context):
            seen.append("broken")
            raise RuntimeError("boom")

    pm.call("gradprobe_observe", event=event, context=context)
    assert seen == []
    pm.add(Recorder(), "recorder", "test")
    pm.add(Broken(), "broken", "test")
    with pytest.warns(GradprobeWarning, match="switched off plugin 'broken'"):
        pm.call("gradprobe_observe", event=event, context=context)
    assert sorted(seen) == ["broken", "recorder"]
    seen.clear()
    pm.call("gradprobe_observe", event=event, context=context)
    assert seen == ["recorder"] and pm.statuses["broken"].status == "failed"
    pm.unregister(name="recorder")
    pm.call("gradprobe_observe", event=event, context=context)
    assert seen == ["recorder"]


def test_observers_see_only_the_kinds_and_fields_they_declare():
    """``@observes`` narrows ``gradprobe_observe`` to event kinds (and a field); unmarked implementations see everything."""
    engine = RuleEngine({})
    pm = engine.pm
    seen: list[tuple[str, int]] = []

    class Deep:
        @hookspecs.hookimpl
        @hookspecs.observes("deep", "saturation")
        def gradprobe_observe(self, event, context):
            seen.append(("deep", event["step"]))

    class NonFinite:
        @hookspecs.hookimpl
        @hookspecs.observes("step", having="nonfinite")
        def gradprobe_observe(self, event, context):
            seen.append(("nonfinite", event["step"]))

    class Everything:
        @hookspecs.hookimpl
        def gradprobe_observe(self, event, context):
            seen.append(("all", event["step"]))

    engine.feed(
        {"v": 1, "kind": "step", "step": 0, "nonfinite": None}
    )  # cached before the plugins arrive: renewed below
    for plugin, name in ((Deep(), "deep"), (NonFinite(), "nonfinite"), (Everything(), "all")):
        pm.add(plugin, name, "test")
    engine.feed({"v": 1, "kind": "step", "step": 1, "nonfinite": None})
    engine.feed({"v": 1, "kind": "step", "step": 2, "nonfinite": {"where": "loss"}})
    engine.feed({"v": 1, "kind": "deep", "step": 3, "layer": "rnn"})
    engine.feed({"v": 1, "kind": "saturation", "step": 4, "layer": "rnn", "fractions": {}})
    engine.feed({"v": 1, "kind": "fix", "step": 5, "name": "clip"})
    # pluggy's order: the last registered first
    assert seen == [
        ("all", 1),
        ("all", 2),
        ("nonfinite", 2),
        ("all", 3),
        ("deep", 3),
        ("all", 4),
        ("deep", 4),
        ("all", 5),
    ]
    pm.unregister(name="all")
    seen.clear()
    engine.feed({"v": 1, "kind": "deep", "step": 6, "layer": "rnn"})
    assert seen == [("deep", 6)]


@pytest.mark.parametrize("args", [(), (1,), ("step", None)])
def test_observes_refuses_what_is_not_a_kind(args):
    with pytest.raises(TypeError, match="event kinds"):
        hookspecs.observes(*args)


def test_the_built_in_rules_declare_what_they_observe():
    """Each built-in ``gradprobe_observe`` reads only some kinds; an unmarked one would be called for every step line."""
    from gradprobe.plugins import DEFAULT_PLUGINS

    for name in DEFAULT_PLUGINS:
        module = importlib.import_module(name)
        function = getattr(module, "gradprobe_observe", None)
        if function is not None:
            assert hasattr(function, hookspecs.OBSERVES_ATTRIBUTE), name


def test_a_plugin_with_a_hook_wrapper_is_refused_loudly():
    """gradprobe calls each plugin's hooks on their own (one plugin's error switches off that plugin alone), so a
    wrapper cannot run around the others: it is refused with a warning, never silently dropped."""
    import types

    from gradprobe.hookspecs import hookimpl
    from gradprobe.plugins import make_plugin_manager

    plugin = types.ModuleType("wrapping_plugin")

    @hookimpl(wrapper=True)
    def gradprobe_event_written(event):
        return (yield)

    plugin.gradprobe_event_written = gradprobe_event_written
    pm = make_plugin_manager(load_entry_points=False)
    with pytest.warns(GradprobeWarning, match="hook wrappers are not supported"):
        pm.add(plugin, "wrapping_plugin", "test")
    assert pm.get_plugin("wrapping_plugin") is None
    assert pm.statuses["wrapping_plugin"].status == "failed"
