"""The plugin manager: built-in rules, first-party and third-party plugins, each isolated from the others.

A manager is built per run (``attach``, ``check``, ``report``...), so
installing, removing or disabling a plugin needs no restart. A plugin that
fails to import, registers a code another plugin owns, or raises inside a
hook is switched off alone, with one :class:`~gradprobe.faults.GradprobeWarning`
naming it; the other plugins, the run log and the user's training go on.

``GRADPROBE_DISABLE_PLUGINS=name,...`` (entry-point or module names) keeps
plugins from loading at all; ``gradprobe plugins`` lists every plugin with
its hooks and status.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, NamedTuple

import pluggy

from gradprobe import hookspecs
from gradprobe.faults import short, warn
from gradprobe.frozen import frozen
from gradprobe.watchdog import ENV as WATCHDOG_ENV
from gradprobe.watchdog import HookTimeout, Watchdog, budget_seconds

ENTRY_POINT_GROUP = "gradprobe"
#: The hooks through which plugins judge: one that raises leaves layers unjudged (GP001).
RULE_HOOKS = frozenset({"gradprobe_lint", "gradprobe_observe", "gradprobe_summarize"})
DISABLE_ENV = "GRADPROBE_DISABLE_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "gradprobe.rules.gp001_not_measured",
    "gradprobe.rules.gp002_no_gradients",
    "gradprobe.rules.gp101_vanishing_gradient",
    "gradprobe.rules.gp102_exploding_gradient",
    "gradprobe.rules.gp103_non_finite_gradient",
    "gradprobe.rules.gp201_recurrent_spectrum",
    "gradprobe.rules.gp202_forget_gate_bias",
    "gradprobe.rules.gp203_input_weight_scale",
    "gradprobe.rules.gp301_saturated_gates",
    "gradprobe.rules.gp302_dead_relu",
    "gradprobe.rules.gp401_no_clipping_with_exploding_risk",
    "gradprobe.rules.gp402_truncation_vs_horizon",
    "gradprobe.rules.gp403_diverging_loss",
    "gradprobe.rules.gp501_decay_collapse",
    "gradprobe.rules.gp502_memory_beyond_training",
    "gradprobe.rules.gp503_unit_decay",
    "gradprobe.rules.gp504_nonfinite_decay",
    "gradprobe.rules.gp505_decay_init_range",
)


@dataclass
class PluginStatus:
    """One plugin as ``gradprobe plugins`` shows it.

    Attributes:
        name: Entry-point name (third party) or module name (built in).
        source: ``"built-in"`` or the distribution that provides it.
        status: ``"active"``, ``"disabled"`` (by configuration) or ``"failed"``.
        reason: Why it is not active.
        hooks: The gradprobe hooks it implements.
    """

    name: str
    source: str
    status: str = "active"
    reason: str = ""
    hooks: list[str] = field(default_factory=list)


def disabled_names(extra: Iterable[str] = ()) -> set[str]:
    """Plugin names switched off by ``GRADPROBE_DISABLE_PLUGINS`` and ``extra``."""
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    return names | {n.strip() for n in extra if n.strip()}


class PluginManager(pluggy.PluginManager):
    """A pluggy manager whose hook calls isolate each plugin (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.statuses: dict[str, PluginStatus] = {}
        #: Per hook, its plain implementations in call order as ``(plugin name, function, argument names)``;
        #: a report calls ``gradprobe_observe`` once per event, so the list is built once, not per call.
        self._callers: dict[str, list[tuple[str, Any, tuple[str, ...]]]] = {}
        #: Per event kind, the ``gradprobe_observe`` implementations that read it (see :func:`hookspecs.observes`).
        self._observers: dict[str, _Observers] = {}
        #: ``(plugin name, layer)`` -> why: a plugin that raised on one layer is switched off for that layer alone.
        self.layer_faults: dict[tuple[str, str], str] = {}
        #: Plugin name -> why, for rule plugins switched off whole while this manager ran (a rule hook raised;
        #: not a plugin that failed to load, nor one whose event or sink hook raised: they judge nothing).
        self.run_faults: dict[str, str] = {}
        #: The time budget of one call into a plugin that is not built in (``GRADPROBE_HOOK_SECONDS``).
        self.hook_seconds = budget_seconds()
        self._watchdog: Watchdog | None = None
        #: Built-in plugins, called without a time budget.
        self._trusted: set[str] = set()

    def register(self, plugin: object, name: str | None = None) -> str | None:
        self._callers.clear()
        self._observers.clear()
        return super().register(plugin, name=name)

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        self._callers.clear()
        self._observers.clear()
        return super().unregister(plugin, name=name)

    def _implementations(self, hook: str) -> list[tuple[str, Any, tuple[str, ...]]]:
        found = self._callers.get(hook)
        if found is None:
            impls = reversed(getattr(self.hook, hook).get_hookimpls())
            # pluggy's order (tryfirst/trylast, then last registered first); wrappers are refused by add()
            found = [
                (impl.plugin_name, impl.function, tuple(impl.argnames))
                for impl in impls
                if not (impl.hookwrapper or impl.wrapper)
            ]
            self._callers[hook] = found
        return found

    def add(self, plugin: object, name: str, source: str) -> None:
        """Register a plugin and record it as active.

        A plugin with a hook wrapper (``wrapper=True`` or ``hookwrapper=True``)
        is refused, loudly: gradprobe calls each implementation on its own so
        that one plugin's error switches off that plugin alone, and a wrapper
        would not run around the others as pluggy promises.
        """
        self.register(plugin, name=name)
        callers = self.get_hookcallers(plugin) or []
        wrappers = [
            caller.name
            for caller in callers
            for impl in caller.get_hookimpls()
            if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper)
        ]
        if wrappers:
            self.unregister(name=name)
            self.skip(
                name,
                source,
                "failed",
                f"hook wrappers are not supported ({', '.join(sorted(wrappers))}): gradprobe calls each plugin's hooks "
                "on their own, so that one plugin's error switches off that plugin alone",
            )
            return
        self.statuses[name] = PluginStatus(name, source, hooks=sorted(c.name for c in callers))
        if source == "built-in":
            self._trusted.add(name)

    def skip(self, name: str, source: str, status: str, reason: str) -> None:
        """Record a plugin that is not loaded; a failure is also a warning."""
        self.statuses[name] = PluginStatus(name, source, status, reason)
        if status == "failed":
            warn(f"gradprobe skipped plugin {name!r}: {reason}", stacklevel=4)

    def switch_off(self, name: str, where: str, exc: BaseException) -> None:
        """Unregister a plugin that raised, warn once, and record why."""
        if self.get_plugin(name) is not None:
            self.unregister(name=name)
        status = self.statuses.get(name)
        reason = f"{where} raised {short(exc)}"
        if where in RULE_HOOKS:
            self.run_faults.setdefault(name, reason)
        if status is None or status.status != "failed":
            self.statuses[name] = PluginStatus(
                name, status.source if status else "?", "failed", reason, status.hooks if status else []
            )
            warn(f"gradprobe switched off plugin {name!r}: {reason}", stacklevel=4)

    def switch_off_for_layer(self, name: str, layer: str, where: str, exc: BaseException) -> None:
        """Stop calling a plugin for one layer after it raised on it; warn once per plugin."""
        reason = f"{where} raised {short(exc)}"
        first = not any(plugin == name for plugin, _ in self.layer_faults)
        self.layer_faults[(name, layer)] = reason
        if first:
            warn(
                f"gradprobe switched off plugin {name!r} for layer {layer}: {reason}; it goes on for other layers",
                stacklevel=5,
            )

    def _observers_of(self, kind: str) -> _Observers:
        """``gradprobe_observe``'s implementations that read ``kind``, each with the field it needs (or ``None``)."""
        found = self._observers.get(kind)
        if found is None:
            entries = []
            for entry in self._implementations("gradprobe_observe"):
                kinds, having = getattr(entry[1], hookspecs.OBSERVES_ATTRIBUTE, (None, None))
                if kinds is None or kind in kinds:
                    entries.append((having, entry))
            needs = [having for having, _ in entries if having is not None]
            found = self._observers[kind] = _Observers(
                entries,
                [entry for _, entry in entries],
                bool(needs),
                all(entry[0] in self._trusted for _, entry in entries),
                tuple(dict.fromkeys(needs)) if len(needs) == len(entries) else None,
            )
        return found

    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of ``hook`` in pluggy's order, each plugin isolated; return the results that are not ``None``."""
        return self._call_each(hook, self._implementations(hook), kwargs)

    def call_for_layer(self, hook: str, layer: str, **kwargs: Any) -> list[Any]:
        """:meth:`call` about one layer: a plugin that raises is switched off for ``layer`` alone."""
        return self._call_each(hook, self._implementations(hook), kwargs, layer)

    def observe(self, event: dict[str, Any], context: Any) -> list[Any]:
        """``gradprobe_observe`` for one event and the rules' ``context``: only the implementations that read it
        (:func:`hookspecs.observes`)."""
        kind = event.get("kind")
        observers = self._observers.get(kind) if type(kind) is str else None
        if observers is None:
            observers = self._observers_of(str(kind))
        fields = observers.fields
        if fields is not None:
            for field in fields:
                if event.get(field) is not None:
                    break
            else:
                return []  # e.g. a step event without Inf/NaN, the most frequent line: nobody reads it
        reading = observers.all
        if observers.filtered:
            reading = [entry for having, entry in observers.entries if having is None or event.get(having) is not None]
        if not reading:
            return []
        if not observers.trusted:
            event = frozen(event)  # a plugin cannot change what the next one, or the report, reads
        layer = event.get("layer")
        kwargs = {"event": event, "context": context}
        return self._call_each("gradprobe_observe", reading, kwargs, layer if isinstance(layer, str) else None)

    def _call_each(
        self,
        hook: str,
        implementations: list[tuple[str, Any, tuple[str, ...]]],
        kwargs: dict[str, Any],
        layer: str | None = None,
    ) -> list[Any]:
        results = []
        for plugin_name, function, argnames in implementations:
            if layer is not None and self.layer_faults and (plugin_name, layer) in self.layer_faults:
                continue
            try:
                if self.hook_seconds is None or plugin_name in self._trusted:
                    result = _called(function, argnames, kwargs)
                else:
                    result = self._timed(plugin_name, hook, function, argnames, kwargs)
            except KeyboardInterrupt:  # the user's Ctrl-C goes on to the user
                raise
            except BaseException as exc:  # noqa: BLE001 - SystemExit and GeneratorExit too: one plugin must not take the others (or training) down
                if layer is None or isinstance(exc, HookTimeout):
                    self.switch_off(plugin_name, hook, exc)
                else:
                    self.switch_off_for_layer(plugin_name, layer, hook, exc)
                continue
            if result is not None:
                results.append(result)
        return results

    def _timed(
        self, plugin_name: str, hook: str, function: Any, argnames: tuple[str, ...], kwargs: dict[str, Any]
    ) -> Any:
        """One call into a plugin under the time budget: interrupted past it (:class:`HookTimeout`); a call that
        returned late switches the plugin off all the same (its result is kept)."""
        seconds = self.hook_seconds
        assert seconds is not None
        watchdog = self._watchdog = self._watchdog or Watchdog(seconds)
        call = watchdog.enter()
        try:
            try:
                result = _called(function, argnames, kwargs)
            finally:
                took = watchdog.leave(call)
        except HookTimeout:
            watchdog.leave(call)
            raise HookTimeout(
                f"ran past its time budget of {seconds:g} s ({WATCHDOG_ENV}) and was interrupted"
            ) from None
        if took > seconds:
            self.switch_off(
                plugin_name,
                hook,
                HookTimeout(f"took {took:.1f} s, past its time budget of {seconds:g} s ({WATCHDOG_ENV})"),
            )
        return result


class _Observers(NamedTuple):
    """The ``gradprobe_observe`` implementations that read one kind of event."""

    entries: list[tuple[str | None, tuple[str, Any, tuple[str, ...]]]]  # each with the field it needs, or None
    all: list[tuple[str, Any, tuple[str, ...]]]
    filtered: bool  # some need a field: filter per event
    trusted: bool  # all built in: shown the event as it is
    fields: tuple[str, ...] | None  # every implementation needs one of these fields; None: some need none


def _called(function: Any, argnames: tuple[str, ...], kwargs: dict[str, Any]) -> Any:
    """``function`` called with the hook arguments it names; a generator it returns consumed here (it raises
    while it is consumed)."""
    result = function(*map(kwargs.__getitem__, argnames))
    if result is not None and type(result) is not list and isinstance(result, Iterator):
        result = list(result)
    return result


def make_plugin_manager(load_entry_points: bool = True, disable: Iterable[str] = ()) -> PluginManager:
    """A fresh plugin manager with the hookspecs, the default plugins and (optionally) the installed ones.

    Args:
        load_entry_points: Load the plugins of the ``gradprobe`` entry-point group.
        disable: Plugin names to leave out, besides ``GRADPROBE_DISABLE_PLUGINS``.
    """
    pm = PluginManager()
    off = disabled_names(disable)
    for name in DEFAULT_PLUGINS:
        if name in off:
            pm.skip(name, "built-in", "disabled", f"{DISABLE_ENV} or --disable")
            continue
        pm.add(importlib.import_module(name), name, "built-in")
    if load_entry_points:
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            source = entry.dist.name if entry.dist is not None else "?"
            if entry.name in off or entry.value.split(":")[0] in off:
                pm.skip(entry.name, source, "disabled", f"{DISABLE_ENV} or --disable")
            elif pm.get_plugin(entry.name) is None:
                try:
                    plugin = entry.load()
                except KeyboardInterrupt:  # the user's Ctrl-C goes on to the user
                    raise
                except BaseException as exc:  # noqa: BLE001 - SystemExit and GeneratorExit too: a broken install must not stop gradprobe
                    pm.skip(entry.name, source, "failed", f"import failed: {short(exc)}")
                    continue
                pm.add(plugin, entry.name, source)
    return pm


def default_plugin_manager() -> PluginManager:
    """A plugin manager for one run: built-ins plus installed plugins, minus the disabled ones."""
    return make_plugin_manager()
