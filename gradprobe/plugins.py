"""The plugin manager: built-in rules, first-party and third-party plugins."""

from __future__ import annotations

import importlib
from functools import lru_cache

import pluggy

from gradprobe import hookspecs

ENTRY_POINT_GROUP = "gradprobe"

DEFAULT_PLUGINS: tuple[str, ...] = (
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
)


def make_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh plugin manager with the hookspecs, the default plugins and (optionally) installed ones."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


@lru_cache(maxsize=1)
def default_plugin_manager() -> pluggy.PluginManager:
    """The shared plugin manager (built once per process)."""
    return make_plugin_manager()
