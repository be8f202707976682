"""Forward hooks that keep what the deep probe and the saturation sampler need.

Only calls made with gradients enabled are captured, so validation passes under
``torch.no_grad()`` between training steps never replace the training call.
Hooks never return a value: they observe and never change a forward result
or a gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradprobe.discovery import RecurrentSite

OFF, SAMPLE, DEEP = "off", "sample", "deep"


def as_tuple(state: Any) -> tuple[Tensor, ...]:
    """A state as a tuple of tensors (``h`` -> ``(h,)``)."""
    if state is None:
        return ()
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


@dataclass
class StackCall:
    """One call of a multi-layer recurrent module."""

    input: Tensor | PackedSequence
    hx: Any
    training: bool
    rng_state: Tensor | None = None
    outputs: list[Tensor] = field(default_factory=list)  # output data, h_n (, c_n)
    grads: list[Tensor | None] = field(default_factory=list)


@dataclass
class CellCalls:
    """The calls of a cell within one training step, in call order."""

    inputs: list[Tensor] = field(default_factory=list)
    states_in: list[tuple[Tensor, ...]] = field(default_factory=list)
    outputs: list[tuple[Tensor, ...]] = field(default_factory=list)
    grads: dict[int, Tensor] = field(default_factory=dict)
    chained: bool = True


class ModuleHook:
    """A forward (pre-)hook that pickles and deep-copies as a no-op.

    ``torch.save(model)`` and ``copy.deepcopy(model)`` while a probe is
    attached then work, and the saved or copied model carries no probe: its
    hook does nothing, and the original model stays probed.
    """

    def __init__(self, body: Callable[..., None] | None) -> None:
        self.body = body

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if self.body is not None:
            self.body(*args, **kwargs)

    def __reduce__(self) -> tuple[type[ModuleHook], tuple[None]]:
        return (ModuleHook, (None,))

    def __deepcopy__(self, memo: dict[int, Any]) -> ModuleHook:
        return ModuleHook(None)


class CallCapture:
    """Registers the forward hooks of every recurrent site and keeps their calls.

    Args:
        sites: The recurrent modules.
        guard: Wraps every hook body; reports and disables the probe on error.
        sample_rows: Batch rows kept on ``sample`` steps (saturation only).
    """

    def __init__(self, sites: list[RecurrentSite], guard: Callable[[str, Callable[[], None]], None], sample_rows: int) -> None:
        self.sites = sites
        self.guard = guard
        self.sample_rows = sample_rows
        self.mode = OFF
        self.paused = False
        self.stack_calls: dict[str, StackCall] = {}
        self.cell_calls: dict[str, CellCalls] = {}
        self.outputs_seen: list[tuple[str, Tensor]] = []  # checked for Inf/NaN only when a step went bad
        self.handles: list[RemovableHandle] = []
        self._tensor_handles: list[RemovableHandle] = []
        self._pending_rng: tuple[str, Tensor] | None = None  # RNG state before a deep step's forward
        for site in sites:
            self.handles.append(site.module.register_forward_pre_hook(ModuleHook(self._pre_hook(site)), with_kwargs=True))
            self.handles.append(site.module.register_forward_hook(ModuleHook(self._post_hook(site)), with_kwargs=True))

    def start_step(self, mode: str) -> None:
        """Forget the previous step's calls and capture the next step's in ``mode``."""
        self.clear()
        self.mode = mode

    def clear(self) -> None:
        self.stack_calls = {}
        self.cell_calls = {}
        self.outputs_seen = []
        for handle in self._tensor_handles:
            handle.remove()
        self._tensor_handles = []

    def nonfinite_outputs(self) -> list[str]:
        """Sites whose output this step held Inf/NaN, in forward order (scanned on demand)."""
        bad = []
        for name, tensor in self.outputs_seen:
            if name not in bad and not bool(torch.isfinite(tensor.detach()).all()):
                bad.append(name)
        return bad

    def remove(self) -> None:
        """Remove every hook and drop every captured tensor."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.clear()
        self.sites = []
        self.mode = OFF

    # -- hooks ---------------------------------------------------------------

    def _active(self) -> bool:
        return not self.paused and torch.is_grad_enabled()

    def _pre_hook(self, site: RecurrentSite) -> Callable[..., None]:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            if self.mode != DEEP or not self._active() or site.kind != "stack" or site.name in self.stack_calls:
                return
            if module.training and getattr(module, "dropout", 0) and module.num_layers > 1:
                self.guard(f"forward pre-hook of {site.name}", lambda: self._snapshot_rng(site))

        return hook

    def _snapshot_rng(self, site: RecurrentSite) -> None:
        self._pending_rng = (site.name, torch.get_rng_state())

    def _post_hook(self, site: RecurrentSite) -> Callable[..., None]:
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            if self._active():
                self.guard(f"forward hook of {site.name}", lambda: self._record(site, module, args, kwargs, output))

        return hook

    def _record(self, site: RecurrentSite, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if site.kind == "stack":
            self._record_stack(site, module, args, kwargs, output)
        else:
            self._record_cell(site, args, kwargs, output)

    def _record_stack(self, site: RecurrentSite, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if site.name in self.stack_calls:
            return
        out, hidden = output
        data = out.data if isinstance(out, PackedSequence) else out
        self.outputs_seen.append((site.name, data))
        if self.mode == OFF:
            return
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        call = StackCall(args[0] if args else kwargs["input"], hx, module.training)
        pending = self._pending_rng
        if pending is not None and pending[0] == site.name:
            call.rng_state = pending[1]
            self._pending_rng = None
        if self.mode == DEEP:
            call.outputs = [data, *as_tuple(hidden)]
            call.grads = [None] * len(call.outputs)
            for index, tensor in enumerate(call.outputs):
                if tensor.requires_grad:
                    self._tensor_handles.append(tensor.register_hook(self._grad_sink(call.grads, index)))
        self.stack_calls[site.name] = call

    def _record_cell(self, site: RecurrentSite, args: tuple, kwargs: dict, output: Any) -> None:
        calls = self.cell_calls.setdefault(site.name, CellCalls())
        outputs = as_tuple(output)
        self.outputs_seen.append((site.name, outputs[0]))
        if self.mode == OFF:
            return
        x = args[0] if args else kwargs["input"]
        state = as_tuple(args[1] if len(args) > 1 else kwargs.get("hx", kwargs.get("state")))
        if calls.outputs and (not state or state[0] is not calls.outputs[-1][0]):
            calls.chained = False
        if self.mode == SAMPLE:
            rows = self.sample_rows
            calls.inputs.append(x.detach()[:rows])
            calls.states_in.append(tuple(s.detach()[:rows] for s in state))
            calls.outputs.append(outputs)
            return
        index = len(calls.outputs)
        calls.inputs.append(x.detach())
        calls.states_in.append(tuple(s.detach() for s in state))
        calls.outputs.append(outputs)
        if outputs[0].requires_grad:
            self._tensor_handles.append(outputs[0].register_hook(self._cell_grad_sink(calls.grads, index)))

    @staticmethod
    def _grad_sink(store: list[Tensor | None], index: int) -> Callable[[Tensor], None]:
        def sink(grad: Tensor) -> None:
            held = store[index]
            store[index] = grad.detach() if held is None else held + grad.detach()

        return sink

    @staticmethod
    def _cell_grad_sink(store: dict[int, Tensor], index: int) -> Callable[[Tensor], None]:
        def sink(grad: Tensor) -> None:
            store[index] = grad.detach()

        return sink
