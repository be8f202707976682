"""Find the recurrent layers of a model and describe them."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from gradprobe.cell_modes import GATE_COUNT, GATE_NAMES
from gradprobe.errors import NotRecurrentError
from gradprobe.linear_adapters import built_in_adapter
from gradprobe.recurrence_adapter import RecurrenceAdapter
from gradprobe.reference import CellBase, RecurrentBase

#: Finds the adapter of a module that is a diagonal linear recurrence (the ``gradprobe_recurrence`` hook), or None.
AdapterLookup = Callable[[nn.Module], "RecurrenceAdapter | None"]

#: How a recurrent module is driven: a whole sequence per call, one step per call, or scripted (no hooks).
SiteKind = Literal["stack", "cell", "scripted"]


@dataclass
class RecurrentSite:
    """One recurrent module of the model.

    Attributes:
        name: Qualified module name (``""`` is the model itself, shown as its class).
        module: The module.
        kind: ``"stack"`` for fused/reference multi-layer modules driven with
            a whole sequence; ``"cell"`` for cells called once per time step;
            ``"scripted"`` for TorchScript recurrent modules, which take no
            hooks and are reported as not measured (GP001).
        mode: ``RNN_TANH``, ``RNN_RELU``, ``RNN_LEAKY_RELU``, ``LSTM`` or ``GRU``; ``None`` for a
            custom cell (probed through autograd, without gate statistics).
        adapter: For a diagonal linear recurrence (LRU, minGRU, Mamba...), how to read its decays
            (:mod:`gradprobe.recurrence_adapter`); its one call covers a whole sequence (kind ``"cell"``).
    """

    name: str
    module: nn.Module
    kind: SiteKind
    mode: str | None
    tracks: list[str] = field(default_factory=list)
    adapter: RecurrenceAdapter | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the run log's ``meta`` event."""
        m = self.module
        info: dict[str, Any] = {"name": self.name, "type": type(m).__name__, "kind": self.kind, "mode": self.mode}
        for attr in ("input_size", "hidden_size", "num_layers", "proj_size", "bidirectional", "batch_first", "dropout"):
            if hasattr(m, attr):
                info[attr] = getattr(m, attr)
        info["tracks"] = list(self.tracks)
        if self.adapter is not None:
            info["recurrence"] = self.adapter.kind
            if self.adapter.documented:
                info["documented"] = self.adapter.documented
        return info


def mode_of(module: nn.Module) -> str | None:
    """``RNN_TANH``, ``RNN_RELU`` (``RNN_LEAKY_RELU``: reference modules), ``LSTM`` or ``GRU``; None for custom modules."""
    if isinstance(module, (nn.RNNBase, RecurrentBase)):
        return module.mode
    if isinstance(module, CellBase):
        return module.mode
    if isinstance(module, nn.LSTMCell):
        return "LSTM"
    if isinstance(module, nn.GRUCell):
        return "GRU"
    if isinstance(module, nn.RNNCell):
        return "RNN_TANH" if module.nonlinearity == "tanh" else "RNN_RELU"
    return None


def _tracks(name: str, module: nn.Module, kind: str) -> list[str]:
    if kind == "cell":
        return [name]
    directions = 2 if module.bidirectional else 1
    layers = int(module.num_layers)  # type: ignore[arg-type]  # nn.RNNBase or a reference stack
    return [f"{name}.l{k}" + ("_reverse" if d else "") for k in range(layers) for d in range(directions)]


def display_name(name: str, module: nn.Module) -> str:
    return name or type(module).__name__


#: Attribute holding the user's model inside a wrapper: ``DataParallel``/``DistributedDataParallel``
#: (``module``) and ``torch.compile`` (``_orig_mod``), as prefixes of the wrapped names.
_WRAPPED = {"DataParallel": "module", "DistributedDataParallel": "module", "OptimizedModule": "_orig_mod"}


def unwrap(model: Any) -> Any:
    """The user's model inside ``DataParallel``, ``DistributedDataParallel`` and ``torch.compile`` wrappers.

    The wrappers call the inner model's modules, so the probe's hooks belong
    there, and layer and parameter names stay those of the user's model.
    """
    for _ in range(8):
        attribute = _WRAPPED.get(type(model).__name__)
        inner = getattr(model, attribute, None) if attribute else None
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


def _strip_wrapper_prefix(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def find_recurrent(
    model: nn.Module, cells: Iterable[str | nn.Module] = (), adapters: AdapterLookup | None = None
) -> list[RecurrentSite]:
    """List the recurrent modules of ``model`` in registration order.

    torch.nn RNN/LSTM/GRU, their cells, and the reference modules are found
    automatically; custom cells are named in ``cells`` (qualified names or the
    module objects). A custom cell is called as ``cell(x_t, state)`` and
    returns the next state (a tensor, or a tuple whose first item is ``h``).
    Diagonal linear recurrences are found by their adapter: ``adapters``
    (the plugins' ``gradprobe_recurrence`` hook) first, then gradprobe's own
    (:func:`gradprobe.linear_adapters.built_in_adapter`).

    Raises:
        NotRecurrentError: ``model`` is not a module or holds no recurrent layer.
    """
    if not isinstance(model, nn.Module):
        raise NotRecurrentError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    wanted = list(cells or ())
    names = {id(m): n for n, m in model.named_modules()}
    custom: set[int] = set()
    for item in wanted:
        if isinstance(item, str):
            try:
                custom.add(id(model.get_submodule(item)))
            except AttributeError:
                try:
                    custom.add(id(model.get_submodule(_strip_wrapper_prefix(item))))
                except AttributeError:
                    raise NotRecurrentError(f"model has no submodule named {item!r}") from None
        elif isinstance(item, nn.Module) and id(item) in names:
            custom.add(id(item))
        else:
            raise NotRecurrentError(f"cell {item!r} is not a submodule of the model")
    sites: list[RecurrentSite] = []
    inside_stack: set[int] = set()
    for name, module in model.named_modules():
        if id(module) in inside_stack:
            continue
        mode = mode_of(module)
        kind: SiteKind
        adapter = _adapter_of(module, adapters)
        if adapter is not None:
            inside_stack.update(id(m) for m in module.modules())
            shown = display_name(name, module)
            sites.append(RecurrentSite(shown, module, "cell", None, [shown], adapter))
            continue
        if _scripted_recurrent(module) or (isinstance(module, torch.jit.ScriptModule) and id(module) in custom):
            kind = "scripted"
            inside_stack.update(id(m) for m in module.modules())
            sites.append(RecurrentSite(display_name(name, module), module, kind, None, [display_name(name, module)]))
            continue
        if isinstance(module, (nn.RNNBase, RecurrentBase)):
            kind = "stack"
            inside_stack.update(id(m) for m in module.modules())
        elif mode is not None or id(module) in custom:
            kind = "cell"
        else:
            continue
        shown = display_name(name, module)
        sites.append(RecurrentSite(shown, module, kind, mode, _tracks(shown, module, kind)))
    if not sites:
        raise NotRecurrentError(
            f"{type(model).__name__} has no recurrent layer (torch.nn RNN/LSTM/GRU, a *Cell, a gradprobe.reference "
            "module, a linear recurrence a plugin adapts, or a custom cell named with cells=...)"
        )
    return sites


def adapters_from(call_hook: Callable[..., list[Any]]) -> AdapterLookup:
    """The lookup asking the plugins' ``gradprobe_recurrence`` hook through ``call_hook`` (the rule engine's):
    the first adapter a plugin returns."""

    def lookup(module: nn.Module) -> RecurrenceAdapter | None:
        for found in call_hook("gradprobe_recurrence", module=module):
            if isinstance(found, RecurrenceAdapter):
                return found
        return None

    return lookup


def _adapter_of(module: nn.Module, adapters: AdapterLookup | None) -> RecurrenceAdapter | None:
    if isinstance(module, (nn.RNNBase, RecurrentBase, nn.RNNCellBase, CellBase, torch.jit.ScriptModule)):
        return None
    found = adapters(module) if adapters is not None else None
    return found or built_in_adapter(module)


_RECURRENT_NAME = re.compile(r"(RNN|LSTM|GRU)", re.IGNORECASE)


def _scripted_recurrent(module: nn.Module) -> bool:
    """A TorchScript module whose original class looks recurrent (``LSTMCell``, ``LayerNormLSTM``, ...)."""
    return isinstance(module, torch.jit.ScriptModule) and bool(
        _RECURRENT_NAME.search(getattr(module, "original_name", ""))
    )


def gate_names(mode: str | None) -> tuple[str, ...]:
    """Gate labels of a mode in weight-row order."""
    return GATE_NAMES.get(mode or "", ("",))


def gate_count(mode: str | None) -> int:
    return GATE_COUNT.get(mode or "", 1)
