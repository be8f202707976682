"""The tensors each backward pass starts from (the loss), seen by wrapping ``torch.autograd.backward``.

``loss.backward()`` and ``torch.autograd.backward(loss)`` both go through
``torch.autograd.backward``. While at least one listener is registered that
function is replaced by a wrapper that shows the roots to the listeners and
then calls the original with the same arguments; the last listener to leave
puts the original back (unless someone replaced the wrapper meanwhile, in
which case it stays a plain pass-through). A listener that raises is skipped:
the backward pass itself always runs exactly as the caller asked.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Listener = Callable[[Sequence[Tensor]], None]

_listeners: dict[int, Listener] = {}
_ids = itertools.count()
_original: Callable[..., Any] | None = None


def _roots(tensors: Any) -> tuple[Tensor, ...]:
    if isinstance(tensors, Tensor):
        return (tensors,)
    if isinstance(tensors, (list, tuple)):
        return tuple(t for t in tensors if isinstance(t, Tensor))
    return ()


def _wrapped(tensors: Any, *args: Any, **kwargs: Any) -> Any:
    original = _original if _original is not None else _unwrapped
    if _listeners:
        roots = _roots(tensors)
        for listener in list(_listeners.values()):
            try:
                listener(roots)
            except Exception:  # noqa: BLE001, S112 - a listener guards and reports its own errors
                continue
    return original(tensors, *args, **kwargs)


_unwrapped: Callable[..., Any] = torch.autograd.backward
_wrapper = functools.wraps(_unwrapped)(_wrapped)


class Subscription:
    """A registered listener; :meth:`remove` unregisters it (idempotent)."""

    def __init__(self, key: int) -> None:
        self._key: int | None = key

    def remove(self) -> None:
        global _original
        if self._key is None:
            return
        _listeners.pop(self._key, None)
        self._key = None
        if not _listeners and _original is not None:
            if torch.autograd.backward is _wrapper:
                torch.autograd.backward = _original
            _original = None


def listen(listener: Listener) -> Subscription:
    """Call ``listener(roots)`` at the start of every backward pass until the subscription is removed."""
    global _original
    if _original is None:
        _original = torch.autograd.backward
        torch.autograd.backward = _wrapper
    key = next(_ids)
    _listeners[key] = listener
    return Subscription(key)


def installed() -> bool:
    """Whether the wrapper is in place (some listener is registered)."""
    return torch.autograd.backward is _wrapper
