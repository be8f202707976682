"""How a recurrent cell is called: its input, the state it was handed and the state it returned, whatever its
calling convention (``h``, ``(h, c)``, ``(out, h)``, ``(out, (h, c))``, ``hx=`` or ``state=``).

Shared by the capture (:mod:`gradprobe.recorders.capture`) and the fixes that
hook cells (:mod:`gradprobe.fixes.hidden_clip`, :mod:`gradprobe.fixes.flow`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

#: How a cell returns its next state: the state itself (``h`` or ``(h, c)``), or ``(out, state)``.
STATE, OUT_STATE = "state", "out_state"


def flat_tensors(output: Any) -> tuple[Tensor, ...]:
    """A cell's output as a flat tuple of tensors: ``(out, (h, c))`` -> ``(out, h, c)``."""
    if isinstance(output, Tensor):
        return (output,)
    flat: list[Tensor] = []
    for item in output:
        flat.extend(
            flat_tensors(item) if isinstance(item, (tuple, list)) else (item,) if isinstance(item, Tensor) else ()
        )
    return tuple(flat)


def cell_convention(output: Any, state_in: tuple[Tensor, ...]) -> str | None:
    """How this call returned its state (:data:`STATE` or :data:`OUT_STATE`); ``None`` when one call cannot tell.

    ``h`` and ``(h, c)`` are states; ``(out, (h, c))`` is output and state; a
    pair of tensors is ``(out, h)`` when the call was handed one state tensor,
    ``(h, c)`` when handed two, and undecided when handed none.
    """
    if isinstance(output, Tensor):
        return STATE
    items = tuple(output)
    if len(items) == 2 and isinstance(items[1], (tuple, list)):
        return OUT_STATE
    if len(items) != 2:
        return STATE
    if state_in:
        return OUT_STATE if len(state_in) == 1 else STATE
    return None


def state_part(flat: tuple[Tensor, ...], convention: str) -> tuple[Tensor, ...]:
    """The state within a cell's flat output."""
    return flat[1:] if convention == OUT_STATE else flat


def cell_state_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, ...]:
    """The state a cell call was handed (``cell(x, state)``, ``hx=`` or ``state=``), flat; ``()`` for none."""
    raw_state = args[1] if len(args) > 1 else kwargs.get("hx", kwargs.get("state"))
    return flat_tensors(raw_state) if raw_state is not None else ()


def cell_call_states(
    args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """``(state in, state out)`` of one cell call, as flat tuples (``h`` first), whatever the convention."""
    state_in = cell_state_in(args, kwargs)
    return state_in, state_part(flat_tensors(output), cell_convention(output, state_in) or STATE)


def as_tuple(state: Any) -> tuple[Tensor, ...]:
    """A state as a tuple of tensors (``h`` -> ``(h,)``)."""
    if state is None:
        return ()
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)
