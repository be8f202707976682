"""Forward hooks that keep what the deep probe and the saturation sampler need.

Only calls made with gradients enabled are captured, so validation passes under
``torch.no_grad()`` between training steps never replace the training call.
Hooks never return a value: they observe and never change a forward result
or a gradient.

Under ``torch.compile`` the hooks are traced by Dynamo. On steps that are not
deep they return before touching a tensor, so they add no graph break (Dynamo
guards on the capture mode and keeps one graph per mode). On deep steps the
hook body runs eagerly (``torch._dynamo.disable``): one graph break per
recurrent call on those steps only. Compiled steps therefore skip what cheap
steps record in eager mode (sampled saturation, the sequence length and the
truncation window): deep steps still measure them.

Calls on ``DataParallel`` replicas (multi-GPU ``nn.DataParallel``, run in
worker threads) are counted, not captured: the replica's weights are copies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradprobe.cell_calls import (
    OUT_STATE,
    STATE,
    as_tuple,
    cell_convention,
    cell_state_in,
    flat_tensors,
    state_part,
)
from gradprobe.discovery import RecurrentSite
from gradprobe.module_hooks import ProbeHookHandle, register_forward_hook, register_forward_pre_hook
from gradprobe.recorders.sequence_replay import SequenceCall, detached, is_sequence_call


class CaptureMode(str, Enum):
    """What the hooks keep on a step: nothing but the sequence bookkeeping, a few rows for saturation, or every
    call with its gradients."""

    OFF = "off"
    SAMPLE = "sample"
    DEEP = "deep"


OFF, SAMPLE, DEEP = CaptureMode.OFF, CaptureMode.SAMPLE, CaptureMode.DEEP


def _compiling_check() -> Callable[[], bool] | None:
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if check is None:  # torch < 2.3
        check = getattr(getattr(torch, "_dynamo", None), "is_compiling", None)
    return check


_IS_COMPILING = _compiling_check()


def compiling() -> bool:
    """Whether Dynamo is tracing the current code (``torch.compile``)."""
    return bool(_IS_COMPILING()) if _IS_COMPILING is not None else False


def eager(body: Callable[..., None]) -> Callable[..., None]:
    """``body`` run outside Dynamo's tracing (a graph break where it is called from compiled code)."""
    dynamo = getattr(torch, "_dynamo", None)
    disable = getattr(dynamo, "disable", None)
    return disable(body) if disable is not None else body


@dataclass
class StackCall:
    """One call of a multi-layer recurrent module."""

    input: Tensor | PackedSequence
    hx: Any
    training: bool
    rng_state: Tensor | None = None
    outputs: list[Tensor] = field(default_factory=list)  # output data, h_n (, c_n)
    grads: list[Tensor | None] = field(default_factory=list)
    final: tuple[Tensor, ...] = ()  # h_n (, c_n), to recognise the next call of a chain
    #: ``_version`` of the output data when captured (an output changed in place since is not the layer's output).
    output_version: int | None = None

    def layer_output(self) -> Tensor | None:
        """The call's output (the top layer's ``h_t``; packed rows for packed input), detached;
        ``None`` when not captured or changed in place since."""
        if not self.outputs or self.outputs[0]._version != self.output_version:
            return None
        return self.outputs[0].detach()


#: Calls kept per site and step at most: a longer chain restarts, so capture memory stays bounded.
MAX_CHAIN_CALLS = 4096


def _time_steps(input_: Any, batch_first: bool) -> int:
    """Time steps of one call's input (packed, batched or unbatched)."""
    if isinstance(input_, PackedSequence):
        return len(input_.batch_sizes)
    return int(input_.shape[1] if (batch_first and input_.dim() == 3) else input_.shape[0])


def continues(state: tuple[Tensor, ...], previous_final: tuple[Tensor, ...]) -> bool:
    """Whether a call whose initial state is ``state`` continues the sequence that ended in ``previous_final``.

    It does when it is handed the previous final state itself, or a state computed
    from something in the graph (a transformed state, an attention mix). A call
    with no state, or a state outside the graph (fresh zeros, a detached carry),
    starts a new sequence: the gradient does not reach back across it.
    """
    return handed_on(state, previous_final) or any(s.grad_fn is not None for s in state)


def handed_on(state: tuple[Tensor, ...], final: tuple[Tensor, ...]) -> bool:
    """Whether ``state`` is made of the very tensors a previous call returned (``final``)."""
    return bool(state) and all(any(s is f for f in final) for s in state)


def carried_detached(state: tuple[Tensor, ...], kept: tuple[Tensor, ...]) -> bool:
    """Whether ``state`` is a detached copy of ``kept`` (the final state of the previous training step)."""
    return (
        bool(state)
        and len(state) == len(kept)
        and all(
            s.grad_fn is None and s.shape == k.shape and _address(s) == _address(k) is not None
            for s, k in zip(state, kept)
        )
    )


def _address(tensor: Tensor) -> int | None:
    """Where the tensor's data lives; ``None`` for tensors without storage (functorch wrappers, fake tensors)."""
    try:
        return int(tensor.data_ptr())
    except RuntimeError:
        return None


@dataclass
class CellCalls:
    """The calls of a cell within one training step, in call order.

    Attributes:
        outputs: Each call's output as a flat tuple of tensors (:func:`flat_tensors`).
        grads: Gradients of the outputs, by ``(call index, position in the flat output)``.
        convention: How the cell returns its state (:data:`STATE` or :data:`OUT_STATE`).
    """

    inputs: list[Tensor] = field(default_factory=list)
    states_in: list[tuple[Tensor, ...]] = field(default_factory=list)
    outputs: list[tuple[Tensor, ...]] = field(default_factory=list)
    grads: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    chained: bool = True  # every call was handed the previous call's output itself
    convention: str = STATE
    #: On deep steps, a first call that mapped a whole sequence (a module looping over time inside its call).
    sequence: SequenceCall | None = None

    @property
    def whole_sequence(self) -> SequenceCall | None:
        """The call to measure at the sequence level (:mod:`gradprobe.recorders.sequence_replay`) rather than
        replay as a cell: a sequence-mapping call that no other call of the chain followed."""
        return self.sequence if len(self.inputs) == 1 else None

    @property
    def h_position(self) -> int:
        """Where ``h`` sits in the flat output."""
        return 1 if self.convention == OUT_STATE else 0


@dataclass
class Sequence:
    """The sequence a site is running in this training step, as its calls arrive (kept in every mode).

    Attributes:
        length: Time steps so far (over all calls of the chain).
        carried: The chain started from a detached copy of the previous training
            step's final state (truncated BPTT with a carried state).
        final: The last call's final state (live tensors, this step only).
    """

    length: int = 0
    carried: bool = False
    final: tuple[Tensor, ...] = ()


@dataclass(frozen=True)
class StepRecord:
    """What the hooks captured on one training step, handed over whole by :meth:`CallCapture.take`.

    Attributes:
        mode: The capture mode the step ran in.
        stack_calls: Per stack site, the latest chain of calls.
        cell_calls: Per cell site, the latest sequence of calls.
        sequences: Per site, the sequence it ran this step (length, carried state); kept in every mode.
        outputs_seen: ``(site, output)`` of every call, scanned for Inf/NaN only when a step went bad.
    """

    mode: CaptureMode
    stack_calls: Mapping[str, list[StackCall]]
    cell_calls: Mapping[str, CellCalls]
    sequences: Mapping[str, Sequence]
    outputs_seen: tuple[tuple[str, Tensor], ...] = ()

    def nonfinite_outputs(self) -> list[str]:
        """Sites whose output this step held Inf/NaN, in forward order (scanned on demand)."""
        bad: list[str] = []
        for name, tensor in self.outputs_seen:
            if name not in bad and not bool(torch.isfinite(tensor.detach()).all()):
                bad.append(name)
        return bad


@dataclass(frozen=True)
class SiteCalls:
    """How often a site's forward hooks ran over the whole run (for the "not measured" reasons)."""

    calls: int
    with_gradients: int
    on_replicas: int


class CallCapture:
    """Registers the forward hooks of every recurrent site and keeps their calls.

    Args:
        sites: The recurrent modules.
        guard: Wraps every hook body; reports and disables the probe on error.
        sample_rows: Batch rows kept on ``sample`` steps (saturation only).
    """

    def __init__(
        self, sites: list[RecurrentSite], guard: Callable[[str, Callable[[], None]], None], sample_rows: int
    ) -> None:
        self.sites = sites
        self.guard = guard
        self.sample_rows = sample_rows
        self.mode: CaptureMode = OFF
        self.paused_now = False
        self._stack_calls: dict[str, list[StackCall]] = {}  # the latest chain of calls per site
        self._cell_calls: dict[str, CellCalls] = {}
        self._sequences: dict[str, Sequence] = {}  # this step's latest sequence per site
        self._finals: dict[str, tuple[Tensor, ...]] = {}  # detached final state of the last sequence, across steps
        self._outputs_seen: list[tuple[str, Tensor]] = []  # checked for Inf/NaN only when a step went bad
        self.handles: list[ProbeHookHandle] = []
        self._tensor_handles: list[RemovableHandle] = []
        self._pending_rng: tuple[str, Tensor] | None = None  # RNG state before a deep step's forward
        #: Per site, calls seen in the whole run: ``[any, with gradients enabled]`` (for "not measured" reasons).
        self._calls_seen: dict[str, list[int]] = {site.name: [0, 0] for site in sites}
        #: Per site, calls seen on ``DataParallel`` replicas (not captured).
        self._replica_calls: dict[str, int] = {}
        self._conventions: dict[str, str] = {}  # per cell site, as last decided (kept across steps)
        for site in sites:
            if site.kind == "scripted":  # TorchScript modules take no hooks
                continue
            if site.kind == "stack":  # the pre-hook keeps a stack's random state for a deep step's replay
                self.handles.append(register_forward_pre_hook(site.module, self._pre_hook(site), with_kwargs=True))
            self.handles.append(register_forward_hook(site.module, self._post_hook(site), with_kwargs=True))

    def peek(self) -> StepRecord:
        """The calls captured so far on this step, as a read-only record (the capture goes on)."""
        return StepRecord(
            self.mode,
            MappingProxyType(self._stack_calls),
            MappingProxyType(self._cell_calls),
            MappingProxyType(self._sequences),
            tuple(self._outputs_seen),
        )

    def take(self) -> StepRecord:
        """The step's captured calls as a frozen record; the capture starts afresh (the gradient hooks on the
        step's outputs are removed, their gradients already arrived)."""
        record = self.peek()
        self.clear()
        return record

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No call is captured inside the block (the probe's own replays of a layer)."""
        was = self.paused_now
        self.paused_now = True
        try:
            yield
        finally:
            self.paused_now = was

    def seen(self, site: str) -> SiteCalls:
        """How often ``site``'s hooks ran in the run: all calls, those with gradients enabled, those on replicas."""
        calls, with_gradients = self._calls_seen.get(site, [0, 0])
        return SiteCalls(calls, with_gradients, self._replica_calls.get(site, 0))

    def start_step(self, mode: CaptureMode) -> None:
        """Forget the previous step's calls and capture the next step's in ``mode``."""
        self.clear()
        self.mode = mode

    def clear(self) -> None:
        # the final states kept across steps: storage only, never the graph
        self._finals = {name: tuple(f.detach() for f in final) for name, final in self._finals.items()}
        self._stack_calls = {}
        self._cell_calls = {}
        self._sequences = {}
        self._outputs_seen = []
        for handle in self._tensor_handles:
            handle.remove()
        self._tensor_handles = []

    def remove(self) -> None:
        """Remove every hook and drop every captured tensor."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.clear()
        self._finals = {}
        self.sites = []
        self.mode = OFF

    # -- hooks ---------------------------------------------------------------

    def _active(self) -> bool:
        return not self.paused_now and torch.is_grad_enabled()

    def _pre_hook(self, site: RecurrentSite) -> Callable[..., None]:
        @eager
        def snapshot(module: Any) -> None:
            if module.training and getattr(module, "dropout", 0) and module.num_layers > 1:
                self.guard(f"forward pre-hook of {site.name}", lambda: self._snapshot_rng(site))

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self.mode != DEEP or not self._active():
                return
            snapshot(module)

        return hook

    def _snapshot_rng(self, site: RecurrentSite) -> None:
        self._pending_rng = (site.name, torch.get_rng_state())

    def _post_hook(self, site: RecurrentSite) -> Callable[..., None]:
        where = f"forward hook of {site.name}"

        def observe(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            seen = self._calls_seen.get(site.name)
            if seen is not None:
                seen[0] += 1
                seen[1] += int(torch.is_grad_enabled())
            if module.__dict__.get("_is_replica", False):  # DataParallel sets it on each replica (a plain lookup:
                # getattr on a module that lacks it raises inside nn.Module.__getattr__, ~1 us on every call)
                self._replica_calls[site.name] = self._replica_calls.get(site.name, 0) + 1
                return
            if self._active():
                self.guard(where, lambda: self._record(site, module, args, kwargs, output))

        traced = eager(observe)  # a graph break where Dynamo traces the hook

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if not compiling():
                observe(module, args, kwargs, output)  # eager code: no Dynamo wrapper to pay for on every call
            elif self.mode == DEEP:
                traced(module, args, kwargs, output)  # no graph break on steps that are not deep

        return hook

    def _record(
        self, site: RecurrentSite, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if site.kind == "stack":
            self._record_stack(site, module, args, kwargs, output)
        else:
            self._record_cell(site, args, kwargs, output)

    def _begin(self, site: RecurrentSite, state: tuple[Tensor, ...], handed: bool = False) -> bool:
        """Note a call of ``site``; return whether it starts a new sequence (which then replaces the old one).
        ``handed``: the caller found ``state`` to be the sequence's final state already."""
        sequence = self._sequences.get(site.name)
        if sequence is not None and (handed or continues(state, sequence.final)):
            return False
        self._sequences[site.name] = Sequence(carried=carried_detached(state, self._finals.get(site.name, ())))
        self._outputs_seen = [(name, t) for name, t in self._outputs_seen if name != site.name]
        return True

    def _end(self, site: RecurrentSite, steps: int, final: tuple[Tensor, ...]) -> None:
        sequence = self._sequences[site.name]
        sequence.length += steps
        sequence.final = final
        if final:
            self._finals[site.name] = final  # detached when the step ends (clear): storage only, never the graph

    def _record_stack(
        self, site: RecurrentSite, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        out, hidden = output
        data = out.data if isinstance(out, PackedSequence) else out
        input_ = args[0] if args else kwargs["input"]
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        final = as_tuple(hidden)
        new_sequence = self._begin(site, as_tuple(hx))
        self._end(site, _time_steps(input_, module.batch_first), final)
        self._outputs_seen.append((site.name, data))
        if self.mode == OFF:
            return
        chain = self._stack_calls.get(site.name, [])
        call = StackCall(input_, hx, module.training, final=final)
        pending = self._pending_rng
        if pending is not None and pending[0] == site.name:
            call.rng_state = pending[1]
            self._pending_rng = None
        if self.mode == SAMPLE:  # sampled saturation computes the top layer from its output
            call.outputs = [data]
            call.output_version = data._version
        if self.mode == DEEP:
            call.outputs = [data, *final]
            call.output_version = data._version
            call.grads = [None] * len(call.outputs)
            for index, tensor in enumerate(call.outputs):
                if tensor.requires_grad:
                    self._tensor_handles.append(tensor.register_hook(self._grad_sink(call.grads, index)))
        if new_sequence or self.mode == SAMPLE or len(chain) >= MAX_CHAIN_CALLS:
            chain = []  # a sampled step needs one call; a chain too long to keep restarts (memory stays bounded)
        chain.append(call)
        self._stack_calls[site.name] = chain

    def _record_cell(self, site: RecurrentSite, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        outputs = flat_tensors(output)
        x = args[0] if args else kwargs["input"]
        state = cell_state_in(args, kwargs)
        decided = cell_convention(output, state)
        if decided is not None:
            self._conventions[site.name] = decided
        convention = self._conventions.get(site.name, STATE)
        sequence = self._sequences.get(site.name)
        was_handed_on = sequence is not None and handed_on(state, sequence.final)
        new_sequence = self._begin(site, state, was_handed_on)
        # a call over a whole sequence starts one (a cell with 3-D inputs, a graph cell say, is called again
        # with the state it returned: its later calls continue the chain and are steps)
        whole = new_sequence and bool(outputs) and is_sequence_call(x, outputs[0])
        if whole:  # its steps, and its final state (what a carried state is a copy of)
            steps = int(x.shape[1] if getattr(site.module, "batch_first", False) else x.shape[0])
            self._end(site, steps, state_part(outputs, convention))
        else:
            self._end(site, 1, outputs)
        self._outputs_seen.append((site.name, outputs[0]))
        if self.mode == OFF:
            return
        calls = self._cell_calls.get(site.name)
        if new_sequence or calls is None or len(calls.inputs) >= MAX_CHAIN_CALLS:
            calls = self._cell_calls[site.name] = (
                CellCalls()
            )  # the latest sequence replaces the old: memory stays bounded
        elif not was_handed_on:
            calls.chained = False
        calls.convention = convention
        if self.mode == SAMPLE:
            rows = self.sample_rows
            calls.inputs.append(x.detach()[:rows])
            calls.states_in.append(tuple(s.detach()[:rows] for s in state))
            calls.outputs.append(tuple(o.detach()[:rows] for o in outputs))
            return
        if whole:  # kept for the sequence-level replay; recorded as a cell call too, in case the chain goes on
            self._record_sequence(calls, args, kwargs, outputs[0])
        index = len(calls.outputs)
        calls.inputs.append(x.detach())
        calls.states_in.append(tuple(s.detach() for s in state))
        calls.outputs.append(outputs)
        positions = (calls.h_position,) if decided is not None or site.name in self._conventions else (0, 1)
        for position in positions:
            if position < len(outputs) and outputs[position].requires_grad:
                sink = self._cell_grad_sink(calls.grads, (index, position))
                self._tensor_handles.append(outputs[position].register_hook(sink))

    def _record_sequence(self, calls: CellCalls, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
        """A named cell whose one call covers a whole sequence: keep the call to replay, and its output's gradient."""
        if not args:  # called as module(input=x, ...): replayed as module(x, ...)
            args, kwargs = (kwargs["input"],), {k: v for k, v in kwargs.items() if k != "input"}
        sequence = calls.sequence = SequenceCall(detached(args), detached(kwargs))
        if output.requires_grad:

            def sink(grad: Tensor) -> None:
                held = sequence.output_grad
                sequence.output_grad = grad.detach() if held is None else held + grad.detach()

            self._tensor_handles.append(output.register_hook(sink))

    @staticmethod
    def _grad_sink(store: list[Tensor | None], index: int) -> Callable[[Tensor], None]:
        def sink(grad: Tensor) -> None:
            held = store[index]
            store[index] = grad.detach() if held is None else held + grad.detach()

        return sink

    @staticmethod
    def _cell_grad_sink(store: dict[tuple[int, int], Tensor], key: tuple[int, int]) -> Callable[[Tensor], None]:
        def sink(grad: Tensor) -> None:
            store[key] = grad.detach()

        return sink
