"""``torch.nn.utils.clip_grad_norm_`` served from the gradient norms the probe already read.

A loop that clips by norm pays one pass over every gradient for the norm
(``torch._foreach_norm``), and the probe pays one at the end of backward for
the same numbers. While a listener is registered, ``clip_grad_norm_`` is
replaced by a wrapper that asks the listeners for those norms: one that read
the very gradients the call clips, unchanged since (same tensors, same version
counters, and a small gradient's norm checked again, since AMP's unscaling
changes gradients in place without a version bump), hands its per-parameter
norm tensors over, and the wrapper combines them exactly as torch does
(``vector_norm(stack(norms))``) and clips with torch's own
``clip_grads_with_norm_``. The result is the tensor torch would return, bit
for bit: the first served call for each device, dtype and ``foreach`` choice
is checked against torch's own total (one extra pass, once), and a
combination that does not match is never served again. Every other call
(another norm type, ``error_if_nonfinite``, gradients on several devices or
dtypes, gradients no listener read, a torch before 2.6) goes to torch's
function unchanged. Listeners then learn what was clipped, so the probe knows
the gradients the optimizer receives without reading them again.

The last listener to leave puts torch's function back (unless someone replaced
the wrapper meanwhile: it then stays a pass-through).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from gradprobe.recorders.gradients import on_device


class ClipListener(Protocol):
    def known_norms(self, params: Sequence[Tensor]) -> list[Tensor] | None:
        """The L2 norms of the gradients of ``params`` (those with one, in order), as ``torch._foreach_norm``
        gave them for exactly these gradients as they are now; ``None`` when not known."""

    def clipped(self, params: Sequence[Tensor], max_norm: float, served: bool) -> None:
        """``params``' gradients were just clipped to ``max_norm`` (``served``: from this listener's norms)."""


_listeners: dict[int, ClipListener] = {}
_ids = itertools.count()
_original: Any = None  # torch.nn.utils.clip_grad_norm_ as it was when the first listener came
_original_in_module: Any = None  # torch.nn.utils.clip_grad.clip_grad_norm_ then
_unwrapped: Any = torch.nn.utils.clip_grad_norm_
#: Whether this torch can clip with a given total norm (``clip_grads_with_norm_``, ``get_total_norm``: 2.6+).
SUPPORTED = hasattr(torch.nn.utils, "clip_grads_with_norm_") and hasattr(torch.nn.utils, "get_total_norm")
#: (device type, dtype, foreach) -> whether the served total matched torch's own on its first call.
_checked: dict[tuple[str, torch.dtype, bool | None], bool] = {}


def _same(ours: Tensor, theirs: Tensor) -> bool:
    return bool(torch.equal(ours, theirs) or (bool(ours.isnan()) and bool(theirs.isnan())))


def _served_total(params: list[Tensor], foreach: bool | None) -> Tensor | None:
    """The total norm from a listener's norms, computed as torch computes it, or ``None``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or len({(g.device, g.dtype) for g in grads}) != 1 or grads[0].device.type not in ("cpu", "cuda"):
        return None
    for listener in reversed(list(_listeners.values())):
        try:
            norms = listener.known_norms(params)
        except Exception:  # noqa: BLE001 - a listener's failure only means torch computes the norm
            norms = None
        if norms is None or len(norms) != len(grads):
            continue
        with torch.no_grad():
            # torch moves each norm to the first gradient's device (a no-op where it is: not dispatched here)
            total = torch.linalg.vector_norm(torch.stack([on_device(n, grads[0].device) for n in norms]), 2.0)
        key = (grads[0].device.type, grads[0].dtype, foreach)
        if key not in _checked:
            _checked[key] = _same(total, torch.nn.utils.get_total_norm(grads, 2.0, False, foreach))
        return total if _checked[key] else None
    return None


def _wrapped(
    parameters: Any,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    original = _original if _original is not None else _unwrapped
    if not _listeners or not SUPPORTED or error_if_nonfinite or float(norm_type) != 2.0 or foreach is False:
        return original(parameters, max_norm, norm_type, error_if_nonfinite, foreach)  # type: ignore[no-any-return]
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    if not params:  # an empty generator: torch warns about it
        return original(parameters, max_norm, norm_type, error_if_nonfinite, foreach)  # type: ignore[no-any-return]
    total = _served_total(params, foreach)
    served = total is not None
    if total is None:
        total = original(params, max_norm, norm_type, error_if_nonfinite, foreach)
    else:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach)
    for listener in list(_listeners.values()):
        try:
            listener.clipped(params, float(max_norm), served)
        except Exception:  # noqa: BLE001, S112 - a listener guards and reports its own errors
            continue
    return total


_wrapper = functools.wraps(_unwrapped)(_wrapped)


class Subscription:
    """A registered listener; :meth:`remove` unregisters it (idempotent)."""

    def __init__(self, key: int) -> None:
        self._key: int | None = key

    def remove(self) -> None:
        global _original, _original_in_module
        if self._key is None:
            return
        _listeners.pop(self._key, None)
        self._key = None
        if not _listeners and _original is not None:
            if torch.nn.utils.clip_grad_norm_ is _wrapper:
                torch.nn.utils.clip_grad_norm_ = _original
            if torch.nn.utils.clip_grad.clip_grad_norm_ is _wrapper:
                torch.nn.utils.clip_grad.clip_grad_norm_ = _original_in_module
            _original = _original_in_module = None


def listen(listener: ClipListener) -> Subscription:
    """Let ``listener`` serve and see ``torch.nn.utils.clip_grad_norm_`` calls until the subscription is removed."""
    global _original, _original_in_module
    if _original is None:
        _original, _original_in_module = torch.nn.utils.clip_grad_norm_, torch.nn.utils.clip_grad.clip_grad_norm_
        torch.nn.utils.clip_grad_norm_ = _wrapper
        torch.nn.utils.clip_grad.clip_grad_norm_ = _wrapper
    key = next(_ids)
    _listeners[key] = listener
    return Subscription(key)


def installed() -> bool:
    """Whether the wrapper is in place (some listener is registered)."""
    return torch.nn.utils.clip_grad_norm_ is _wrapper
