"""Plugins that fail in every way a third-party plugin can, for the fault-injection tests."""

from __future__ import annotations

import time

from gradprobe.hookspecs import hookimpl
from gradprobe.rules.registry import Rule


class _Base:
    code = "XP001"

    @hookimpl
    def gradprobe_register_rules(self, register):
        register(
            Rule(code=self.code, name=f"broken-{self.code.lower()}", severity="warning", summary="a rule that fails")
        )


class LintRaises(_Base):
    code = "XP001"

    @hookimpl
    def gradprobe_lint(self, model, context):
        raise RuntimeError("lint exploded")


class SummarizeRaises(_Base):
    code = "XP002"

    @hookimpl
    def gradprobe_summarize(self, context):
        raise RuntimeError("summarize exploded")


class ObserveGeneratorRaises(_Base):
    code = "XP003"

    @hookimpl
    def gradprobe_observe(self, event, context):
        if event.get("kind") == "step" and event.get("step") == 3:
            yield context.finding(self.code, "seen step 3")
            raise RuntimeError("observe exploded while being consumed")


class EventHookRaises:
    @hookimpl
    def gradprobe_event_written(self, event):
        raise RuntimeError("event hook exploded")


class DuplicateCode:
    @hookimpl
    def gradprobe_register_rules(self, register):
        register(Rule(code="GP101", name="my-vanishing", severity="error", summary="claims a built-in code"))


class LintExits(_Base):
    code = "XP004"

    @hookimpl
    def gradprobe_lint(self, model, context):
        raise SystemExit(7)


class SummarizeExits(_Base):
    code = "XP005"

    @hookimpl
    def gradprobe_summarize(self, context):
        raise SystemExit(7)


class EventHookGeneratorExit:
    @hookimpl
    def gradprobe_event_written(self, event):
        raise GeneratorExit


class ObservePrints(_Base):
    code = "XP006"

    @hookimpl
    def gradprobe_observe(self, event, context):
        print("a plugin talking on stdout")


class ObserveHangs(_Base):
    """Loops for ever in pure Python at step 3 (and swallows the first interruption, as careless code does)."""

    code = "XP007"

    @hookimpl
    def gradprobe_observe(self, event, context):
        if event.get("kind") == "step" and event.get("step") == 3:
            try:
                while True:
                    pass
            except BaseException:  # noqa: BLE001 - a careless plugin; the watchdog interrupts it again
                while True:
                    pass


class ObserveSlow(_Base):
    """Blocks 0.6 s in one C call once (past a 0.2 s budget), then returns."""

    code = "XP008"

    @hookimpl
    def gradprobe_observe(self, event, context):
        if event.get("kind") == "step" and event.get("step") == 3:
            time.sleep(0.6)


class EventHookHangs:
    @hookimpl
    def gradprobe_event_written(self, event):
        if event.get("kind") == "step":
            while True:
                pass


class EventHookInterrupted:
    """Raises KeyboardInterrupt on the training thread, as a user's Ctrl-C inside the hook would."""

    @hookimpl
    def gradprobe_event_written(self, event):
        if event.get("kind") == "step":
            raise KeyboardInterrupt


class SummarizeHangs(_Base):
    code = "XP009"

    @hookimpl
    def gradprobe_summarize(self, context):
        while True:
            pass


class ObserveEdits(_Base):
    """Makes a vanishing run look healthy by editing what it is shown (nested series and mappings)."""

    code = "XP010"

    @hookimpl
    def gradprobe_observe(self, event, context):
        if event.get("kind") == "deep":
            event["grad_norms"][:] = [1.0] * len(event["grad_norms"])
            event["profile"][:] = [1.0] * len(event["profile"])
        if isinstance(event.get("params"), dict):
            event["params"].clear()


OBSERVE_EDITS = ObserveEdits()
OBSERVE_HANGS = ObserveHangs()
OBSERVE_SLOW = ObserveSlow()
EVENT_HOOK_HANGS = EventHookHangs()
EVENT_HOOK_INTERRUPTED = EventHookInterrupted()
SUMMARIZE_HANGS = SummarizeHangs()
LINT_RAISES = LintRaises()
LINT_EXITS = LintExits()
SUMMARIZE_EXITS = SummarizeExits()
EVENT_HOOK_GENERATOR_EXIT = EventHookGeneratorExit()
OBSERVE_PRINTS = ObservePrints()
SUMMARIZE_RAISES = SummarizeRaises()
OBSERVE_RAISES = ObserveGeneratorRaises()
EVENT_HOOK_RAISES = EventHookRaises()
DUPLICATE_CODE = DuplicateCode()
