"""Forward hooks on a user's module that never reach the user's checkpoints or copies.

torch keeps a module's hooks in plain dicts of its ``__dict__``, so
``torch.save(model)`` and ``copy.deepcopy(model)`` pickle them with the
module. A gradprobe hook in there would make the checkpoint name a gradprobe
class, which ``torch.load(weights_only=True)`` refuses (and which no process
without gradprobe can load at all), and would carry the probe into a copy.

:func:`register_forward_hook` and :func:`register_forward_pre_hook` register a hook and give the module an
instance-level ``__getstate__`` that returns the module's own state less
gradprobe's hook entries (and less itself). Pickling (``torch.save``,
``copy.copy``, ``copy.deepcopy``) looks ``__getstate__`` up on the instance
first, so the saved or copied module is exactly what it would be without the
probe. The attribute is removed with the last of gradprobe's hooks on that
module.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

_GETSTATE = "__getstate__"

#: Per module, the ids of the hooks gradprobe registered on it.
_OURS: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()


class _CleanState:
    """The instance-level ``__getstate__``: the class's state less gradprobe's hooks."""

    def __init__(self, module: nn.Module) -> None:
        self.module = weakref.ref(module)

    def __call__(self) -> Any:
        module = self.module()
        if module is None:  # pragma: no cover - a bound state getter outliving its module is not reachable
            return {}
        state = type(module).__getstate__(module)
        if not isinstance(state, dict):
            return state
        state = dict(state)
        state.pop(_GETSTATE, None)
        ours = _OURS.get(module, set())
        for key, value in list(state.items()):
            if isinstance(value, dict) and not ours.isdisjoint(value.keys()):
                state[key] = OrderedDict((k, v) for k, v in value.items() if k not in ours)
        return state


class ProbeHookHandle:
    """Removes one gradprobe hook and, with the module's last one, its state filter."""

    def __init__(self, module: nn.Module, handle: RemovableHandle) -> None:
        self._module = weakref.ref(module)
        self._handle: RemovableHandle | None = handle

    def remove(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        handle.remove()
        module = self._module()
        if module is None:
            return
        ours = _OURS.get(module)
        if ours is not None:
            ours.discard(handle.id)
            if not ours:
                del _OURS[module]
                if isinstance(module.__dict__.get(_GETSTATE), _CleanState):
                    del module.__dict__[_GETSTATE]


def _track(module: nn.Module, handle: RemovableHandle) -> ProbeHookHandle:
    _OURS.setdefault(module, set()).add(handle.id)
    if _GETSTATE not in module.__dict__:
        module.__dict__[_GETSTATE] = _CleanState(module)
    return ProbeHookHandle(module, handle)


def register_forward_pre_hook(
    module: nn.Module, hook: Callable[..., Any], *, with_kwargs: bool = False
) -> ProbeHookHandle:
    """``module.register_forward_pre_hook`` whose hook never reaches a pickle or a copy of ``module``."""
    return _track(module, module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))


def register_forward_hook(module: nn.Module, hook: Callable[..., Any], *, with_kwargs: bool = False) -> ProbeHookHandle:
    """``module.register_forward_hook`` whose hook never reaches a pickle or a copy of ``module``."""
    return _track(module, module.register_forward_hook(hook, with_kwargs=with_kwargs))
