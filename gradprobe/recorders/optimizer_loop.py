"""The training loop, observed from the optimizer: one probe step per ``optimizer.step()``.

``attach(model, optimizer=opt)`` hands the step to this recorder. It sees the
gradients twice:

- **right after backward**, from a callback queued on the autograd engine by
  the parameters' post-accumulate hooks (the gradients as the model produced
  them, before the loop touches them);
- **at the optimizer step**, from the optimizer's step pre-hook; for a step
  given a closure (L-BFGS, Lightning's automatic optimization), when the
  closure's first call returns: the pre-hook wraps the closure. That first call
  evaluates the parameters the step starts from (its loss is the one L-BFGS
  returns); the re-evaluations L-BFGS makes while searching are not steps.

Comparing the two tells what the loop did in between: AMP ``GradScaler``
unscaling (a uniform power-of-two factor, or the scale the scaler or the
optimizer states), clipping by norm (a uniform factor: the threshold is the
norm the optimizer receives) or by value (the largest entry the optimizer
receives). The step's loss is the root of the backward passes since the
gradients were last reset (the sum over accumulated micro-batches).
"""

from __future__ import annotations

import functools
import math
import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gradprobe.recorders import backward_roots, clip_calls
from gradprobe.recorders.gradients import GradientReading, empty_record, tensor_norms, without_graph

#: Two gradient norms agree when their ratio is within this of 1.
RELATIVE_TOLERANCE = 1e-5
#: The smallest gradients re-read before a served ``clip_grad_norm_``: at most this many, until they hold this
#: many entries together (AMP's unscaling changes every gradient; a few small ones tell).
SENTINELS = 8
SENTINEL_ENTRIES = 4096


@dataclass
class LoopStep:
    """One optimizer step as the probe records it.

    Attributes:
        loss: The loss of the step (unscaled), when a backward root was seen or handed over.
        gradients: The gradient record right after backward, unscaled (``None``: read at the step).
        clip: What the loop did to the gradients between backward and the
            optimizer: ``{"kind": "norm"|"value"|"other", "threshold": ..., "norm": ..., "norm_after": ...}``.
        grad_scale: The AMP loss scale the backward pass ran under (1.0 without AMP).
        skipped: Backward passes since the previous step whose gradients were
            discarded without an optimizer step (AMP steps skipped on Inf/NaN).
    """

    loss: float | None = None
    gradients: dict[str, Any] | None = None
    clip: dict[str, Any] | None = None
    grad_scale: float = 1.0
    skipped: int = 0
    deferred: DeferredStep | None = None


@dataclass
class DeferredStep:
    """A step whose figures stay on the device until they are read with others (see
    :class:`~gradprobe.quantities.step_statistics.StepStatistics`): nothing changed the gradients between
    backward and the optimizer but, perhaps, a ``clip_grad_norm_`` served from the backward norms.

    Attributes:
        reading: The backward gradient pass (its gradients dropped).
        loss: The step's loss as a 0-d tensor, or a number, or ``None``.
        clipped: ``(parameters clipped, max_norm)`` of that ``clip_grad_norm_``, if one ran.
    """

    reading: GradientReading
    loss: Tensor | float | None
    clipped: tuple[list[str], float] | None = None

    def figures(self, values: list[float], loss_finite: bool = True) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The gradient record and the clipping (as :func:`compare` says) from the reading's ``values``."""
        record = self.reading.record(values, loss_finite)
        if self.clipped is None:
            return record, None
        before = record["params"]
        return record, compare(before, clipped_norms(before, *self.clipped), dict, 1.0, 1.0)


def clipped_norms(before: dict[str, float], names: list[str], max_norm: float) -> dict[str, float]:
    """The gradients' L2 norms after ``clip_grad_norm_(max_norm)`` clipped those of ``names`` (no pass: each is
    scaled by torch's clip coefficient, ``min(max_norm / (total + 1e-6), 1)``)."""
    covered = {n for n in names if n in before}
    factor = min(max_norm / (math.sqrt(sum(before[n] ** 2 for n in covered)) + 1e-6), 1.0)
    return {n: v * factor if n in covered else v for n, v in before.items()}


@dataclass
class _Backward:
    """What the last backward pass left: its gradient record, and each gradient tensor with its version counter
    (an in-place change between backward and the optimizer, such as clipping, bumps it)."""

    reading: GradientReading | None
    grads: dict[str, tuple[Tensor, int | None]]

    @property
    def l2(self) -> dict[str, float]:
        """Per parameter, the L2 norm of its gradient at backward (read from the device on first use)."""
        return self.reading.l2() if self.reading is not None else {}

    @property
    def record(self) -> dict[str, Any]:
        return self.reading.record() if self.reading is not None else empty_record()

    @property
    def raw(self) -> dict[str, Tensor]:
        """The same L2 norms as the 0-d tensors torch's ``_foreach_norm`` gave (empty: not read that way)."""
        return self.reading.raw if self.reading is not None else {}

    def unchanged(self, name: str, grad: Tensor | None) -> bool:
        """Whether ``grad`` is the gradient ``name`` had at backward, with no in-place change since."""
        seen = self.grads.get(name)
        return (
            grad is not None
            and seen is not None
            and seen[0] is grad
            and seen[1] is not None
            and seen[1] == _version(grad)
        )

    def changed(self, named: Sequence[tuple[str, Tensor]]) -> bool:
        """Whether any gradient was replaced or changed in place since backward (no pass over the gradients)."""
        return any(param.grad is not None and not self.unchanged(name, param.grad) for name, param in named)


def _version(tensor: Tensor) -> int | None:
    """The tensor's version counter (bumped by every in-place change), when torch exposes it."""
    version = getattr(tensor, "_version", None)
    return version if isinstance(version, int) else None


@dataclass
class _ClipCall:
    """A ``clip_grad_norm_`` call since backward (see :mod:`clip_calls`): the parameters it clipped, its
    threshold, whether it was served from the backward norms, and their gradients' versions right after."""

    names: list[str]
    max_norm: float
    served: bool
    versions: dict[str, int | None]


@dataclass
class _Pending:
    roots: list[Tensor] = field(default_factory=list)
    scale_candidate: float | None = None
    handed_loss: Tensor | float | None = None
    backward: _Backward | None = None
    backwards: int = 0
    skipped: int = 0
    clip_call: _ClipCall | None = None


def _is_power_of_two(value: float) -> bool:
    if not (math.isfinite(value) and value > 0):
        return False
    exponent = round(math.log2(value))
    return exponent != 0 and abs(math.log2(value) - exponent) < 1e-9


def _scale_of_root(root: Tensor) -> float | None:
    """The AMP scale when ``root`` is ``GradScaler.scale(loss)`` (``loss * scale``), else ``None``."""
    node = root.grad_fn
    if node is None or type(node).__name__ != "MulBackward0":
        return None
    other = getattr(node, "_saved_other", None)
    if not isinstance(other, Tensor) or other.numel() != 1 or other.requires_grad:
        return None
    value = float(other.detach().reshape(()))
    return value if _is_power_of_two(value) and value > 1 else None


def _norms_by_name(named: Sequence[tuple[str, Tensor]], order: float) -> dict[str, float]:
    """Per parameter, the ``order``-norm of its gradient (2: L2, ``math.inf``: its largest entry)."""
    if not named:
        return {}
    return dict(zip((n for n, _ in named), tensor_norms([g for _, g in named], order).tolist()))


def scaled_record(record: dict[str, Any], factor: float) -> dict[str, Any]:
    """A gradient record with every norm divided by ``factor`` (an AMP loss scale)."""
    if factor == 1.0:
        return record
    return {
        **record,
        "grad_norm": record["grad_norm"] / factor,
        "params": {k: v / factor for k, v in record["params"].items()},
        "gates": {k: {g: v / factor for g, v in gates.items()} for k, gates in record["gates"].items()},
    }


def compare(
    before_l2: dict[str, float],
    after_l2: dict[str, float],
    largest: Callable[[], dict[str, float]],
    scale_before: float,
    scale_after: float,
) -> dict[str, Any] | None:
    """What changed the gradients between backward and the optimizer, in unscaled units (``None``: nothing).

    ``largest()`` gives each gradient's largest absolute entry now; it is called (a second pass) only when the
    change is not a uniform factor: clipping by value clamps the entries beyond the threshold, so every
    gradient it changed has its largest entry at the threshold, the largest of all.
    """
    names = [n for n in after_l2 if n in before_l2]
    raw = {n: before_l2[n] / scale_before for n in names}
    got = {n: after_l2[n] / scale_after for n in names}
    pairs = [(raw[n], got[n]) for n in names if math.isfinite(raw[n]) and math.isfinite(got[n])]
    if not pairs:
        return None
    raw_total = math.sqrt(sum(r * r for r, _ in pairs))
    got_total = math.sqrt(sum(g * g for _, g in pairs))
    if all(abs(r - g) <= RELATIVE_TOLERANCE * max(r, 1e-30) for r, g in pairs):
        return None
    ratios = [g / r for r, g in pairs if r > 0]
    base = statistics.median(ratios) if ratios else 1.0
    uniform = all(abs(q - base) <= 1e-4 * max(base, 1e-30) for q in ratios)
    if uniform and base < 1:
        return {"kind": "norm", "threshold": got_total, "norm": raw_total, "norm_after": got_total}
    after_max = largest()
    top_after = max((after_max[n] / scale_after for n in names if n in after_max), default=0.0)
    changed = [n for n in names if abs(raw[n] - got[n]) > RELATIVE_TOLERANCE * max(raw[n], 1e-30)]
    at_threshold = all(
        got[n] < raw[n] and abs(after_max.get(n, 0.0) / scale_after - top_after) <= 1e-6 * max(top_after, 1e-30)
        for n in changed
    )
    if changed and top_after > 0 and at_threshold:
        return {"kind": "value", "threshold": top_after, "norm": raw_total, "norm_after": got_total}
    return {"kind": "other", "threshold": None, "norm": raw_total, "norm_after": got_total}


def innermost(optimizer: Any) -> Any:
    """The torch optimizer inside wrappers (accelerate's ``AcceleratedOptimizer``, ``LightningOptimizer``).

    The hooks go on the optimizer that really steps: a wrapper may call its own
    ``step`` on every micro-batch and the inner one only when gradients sync.
    """
    for _ in range(8):
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            return optimizer
        optimizer = inner
    return optimizer


class OptimizerLoop:
    """Optimizer, parameter and backward hooks that turn each optimizer step into one probe step.

    Args:
        optimizer: The optimizer whose ``step`` ends a training step.
        model: The model (its trainable parameters are watched).
        read_gradients: One pass over the gradients, its norms left on the device
            (:meth:`GradientRecorder.measure`).
        on_step: Called with a :class:`LoopStep` at each optimizer step.
        guard: Wraps every hook body; reports and disables the probe on error.
        scaler: An AMP ``GradScaler`` whose scale is read at each step (optional:
            the scale is otherwise found from the scaled loss or the gradients).
        may_defer: Whether the coming step may leave its figures on the device (a
            :class:`DeferredStep`); without it every step is read at once.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        read_gradients: Callable[[], GradientReading | None],
        on_step: Callable[[LoopStep], None],
        guard: Callable[[str, Callable[[], None]], None],
        scaler: Any = None,
        may_defer: Callable[[], bool] | None = None,
    ) -> None:
        optimizer = innermost(optimizer)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.scaler = scaler
        self.read_gradients = read_gradients
        self.on_step = on_step
        self.guard = guard
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.may_defer = may_defer
        self._name_of = {id(p): n for n, p in self.named}
        self._pending = _Pending()
        self._queued = False
        self._closure_step = False  # between the pre- and post-hook of a step given a closure
        self._closure_recorded = False
        #: Per thread, what its latest backward pass starts from (two models trained in two threads, each with
        #: its own probe, see each other's backward passes through the one wrapper of torch.autograd.backward).
        self._candidates: dict[int, tuple[bool, Tensor | None, float | None]] = {}
        self.handles: list[RemovableHandle] = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        for _, param in self.named:
            self.handles.append(param.register_post_accumulate_grad_hook(self._accumulated))
        self._roots = backward_roots.listen(self._backward_starts)
        self._clips = clip_calls.listen(self)

    # -- what the user hands over ---------------------------------------------

    def hand_over(self, loss: Tensor | float | None) -> None:
        """``probe.step(loss)`` under optimizer hooks: keep the loss for the coming optimizer step."""
        if loss is None or self._pending.backward is None:
            return  # no backward since the last optimizer step: the loss belongs to a step already recorded
        self._pending.handed_loss = loss.detach() if isinstance(loss, Tensor) else float(loss)

    # -- hooks ----------------------------------------------------------------

    def _backward_starts(self, roots: Sequence[Tensor]) -> None:
        # a backward pass that raised (a user's tensor hook, Ctrl-C) never ran its end callback: a new pass
        # starts afresh, or no later pass would queue one and every later step would lose its loss
        self._queued = False
        self.guard("the backward-pass hook", lambda: self._note_roots(roots))

    def _note_roots(self, roots: Sequence[Tensor]) -> None:
        """Keep what this backward pass starts from; it counts only if it reaches our parameters (another
        model's backward, as in a GAN, goes through the same wrapper)."""
        if not any(root.requires_grad for root in roots):
            self._candidates.pop(threading.get_ident(), None)
            return
        fresh = not any(p.grad is not None for _, p in self.named)  # gradients were reset: a new training step
        root = roots[0] if len(roots) == 1 and roots[0].numel() == 1 and roots[0].is_floating_point() else None
        self._candidates[threading.get_ident()] = (
            fresh,
            None if root is None else root.detach(),
            None if root is None else _scale_of_root(root),
        )

    def _take_candidate(self) -> None:
        candidate = self._candidates.pop(threading.get_ident(), None)
        if candidate is None and len(self._candidates) == 1:  # the end callback ran on an autograd device thread
            candidate = self._candidates.popitem()[1]
        if candidate is None:
            return
        fresh, root, scale = candidate
        pending = self._pending
        if fresh:
            if pending.backwards and not self._closure_step:
                pending.skipped += 1  # the previous backward's gradients were dropped without an optimizer step
            pending = self._pending = _Pending(skipped=pending.skipped)
        if root is not None:
            pending.roots.append(root)
            pending.scale_candidate = scale

    def _accumulated(self, param: Tensor) -> None:
        if self._queued:
            return
        self._queued = True
        torch.autograd.Variable._execution_engine.queue_callback(self._backward_ended)

    def _backward_ended(self) -> None:
        self._queued = False
        self.guard("the end-of-backward hook", self._take_candidate)
        self.guard("the end-of-backward hook", self._snapshot)

    def _snapshot(self) -> None:
        reading = self.read_gradients()  # its per-parameter norms are the L2 norms the optimizer step compares
        grads = {n: (p.grad, _version(p.grad)) for n, p in self.named if p.grad is not None}
        self._pending.backward = _Backward(reading, grads)
        self._pending.backwards += 1
        self._pending.clip_call = None

    # -- clip_grad_norm_ (see clip_calls) --------------------------------------

    def known_norms(self, params: Sequence[Tensor]) -> list[Tensor] | None:
        """The backward norms of ``params``' gradients, if every one is unchanged since (a small one re-read)."""
        before, pending = self._pending.backward, self._pending
        if before is None or not before.raw or self.scaler is not None or pending.scale_candidate is not None:
            return None
        norms, checked = [], []
        for param in params:
            if param.grad is None:
                continue
            name = self._name_of.get(id(param))
            if name is None or name not in before.raw or not before.unchanged(name, param.grad):
                return None
            norms.append(before.raw[name])
            checked.append((param.grad.numel(), name, param.grad))
        # AMP's unscaling changes gradients in place without a version bump: the smallest gradients' norms, read
        # again with the same kernel, must be what backward left (one comparison, one read)
        checked.sort(key=lambda entry: entry[0])
        sentinels, size = [], 0
        for numel, name, grad in checked[:SENTINELS]:
            sentinels.append((name, grad))
            size += numel
            if size >= SENTINEL_ENTRIES:
                break
        if sentinels:
            again = torch._foreach_norm([without_graph(grad) for _, grad in sentinels], 2.0)
            kept = [before.raw[name] for name, _ in sentinels]
            if bool((torch.stack(list(again)) != torch.stack(kept)).any()):
                return None
        return norms

    def clipped(self, params: Sequence[Tensor], max_norm: float, served: bool) -> None:
        names = [self._name_of[id(p)] for p in params if p.grad is not None and id(p) in self._name_of]
        versions = {n: _version(p.grad) for n, p in self.named if p.grad is not None}
        self._pending.clip_call = _ClipCall(names, max_norm, served, versions)

    def _served_clip(self, before: _Backward) -> _ClipCall | None:
        """The ``clip_grad_norm_`` call served from the backward norms, when it is the only change to the
        gradients since backward (their version counters tell, no pass), else ``None``."""
        call = self._pending.clip_call
        if call is None or not call.served:
            return None
        now = {n: _version(p.grad) for n, p in self.named if p.grad is not None}
        if now != call.versions or set(now) != set(before.grads):
            return None
        covered = set(call.names)
        return None if before.changed([(n, p) for n, p in self.named if n not in covered]) else call

    def _before_step(
        self, optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        rest = args[1:] if args and args[0] is optimizer else args  # torch passes the optimizer itself first
        closure = rest[0] if rest else kwargs.get("closure")
        self._closure_step = closure is not None
        if closure is None:
            self.guard("the optimizer step hook", lambda: self._record(optimizer, kwargs))
            return None
        self._closure_recorded = False
        wrapped = self._first_call_records(closure, optimizer, kwargs)
        if rest:
            return (*args[: len(args) - len(rest)], wrapped, *rest[1:]), kwargs
        return args, {**kwargs, "closure": wrapped}

    def _first_call_records(
        self, closure: Callable[..., Any], optimizer: Any, kwargs: dict[str, Any]
    ) -> Callable[..., Any]:
        """``closure``, recording the step when its first call returns (before the optimizer moves anything)."""

        def closure_seen(*args: Any, **kw: Any) -> Any:
            result = closure(*args, **kw)
            if self._closure_step and not self._closure_recorded:
                self._closure_recorded = True
                self.guard("the optimizer step hook", lambda: self._record(optimizer, kwargs))
            return result

        return closure_seen

    def _after_step(self, optimizer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._closure_step:
            self._closure_step = False
            if not self._closure_recorded:  # the optimizer never called its closure
                self.guard("the optimizer step hook", lambda: self._record(optimizer, kwargs))

    # -- one step -------------------------------------------------------------

    def _scales(self, optimizer: Any, kwargs: dict[str, Any]) -> tuple[float | None, float]:
        """The scale of the gradients at backward (if known) and at the optimizer (grads still scaled: fused AMP)."""
        scaler = self.scaler if self.scaler is not None else kwargs.get("grad_scaler")
        still_scaled = getattr(optimizer, "grad_scale", None)
        at_optimizer = float(still_scaled) if isinstance(still_scaled, Tensor) else 1.0
        if scaler is not None and hasattr(scaler, "get_scale") and scaler.is_enabled():
            return float(scaler.get_scale()), at_optimizer
        if self._pending.scale_candidate is not None:
            return self._pending.scale_candidate, at_optimizer
        return None, at_optimizer

    def _record(self, optimizer: Any, kwargs: dict[str, Any]) -> None:
        found_inf = getattr(optimizer, "found_inf", None)
        if isinstance(found_inf, Tensor) and float(found_inf) > 0:
            self._pending.skipped += 1  # fused AMP optimizer skips this step
            self._pending = _Pending(skipped=self._pending.skipped)
            return
        pending = self._pending
        step = LoopStep(skipped=pending.skipped)
        before = pending.backward
        if before is not None:
            at_backward, at_optimizer = self._scales(optimizer, kwargs)
            present = [(n, p.grad) for n, p in self.named if p.grad is not None and n in before.grads]
            # the loop left the gradients as backward made them (no clipping), or a clip_grad_norm_ served from
            # the backward norms changed them: no second pass. Under AMP the gradients are read again: the
            # unscaling kernel changes them in place without a version bump
            unscaled = at_backward in (None, 1.0) and at_optimizer == 1.0
            untouched = unscaled and not before.changed(self.named)
            call = self._served_clip(before) if unscaled and not untouched else None
            known = untouched or call is not None
            if known and before.reading is not None and self.may_defer is not None and self.may_defer():
                before.reading.drop_gradients()
                clipped = (call.names, call.max_norm) if call is not None else None
                step.deferred = DeferredStep(before.reading, self._loss_tensor(pending), clipped)
                self._pending = _Pending()
                self.on_step(step)
                return
            if untouched:
                after_l2 = {n: before.l2[n] for n, _ in present}
            elif call is not None:
                after_l2 = clipped_norms(before.l2, call.names, call.max_norm)
            else:
                after_l2 = _norms_by_name(present, 2.0)
            if at_backward is None:
                at_backward = self._detected_scale(before, after_l2, at_optimizer)
            step.grad_scale = at_backward
            step.gradients = scaled_record(before.record, at_backward)
            if untouched:
                step.clip = None
            else:
                step.clip = compare(
                    before.l2, after_l2, lambda: _norms_by_name(present, math.inf), at_backward, at_optimizer
                )
            step.loss = self._loss(pending, at_backward)
        self._pending = _Pending()
        self.on_step(step)

    @staticmethod
    def _detected_scale(before: _Backward, after_l2: dict[str, float], at_optimizer: float) -> float:
        """A uniform power-of-two factor between backward and optimizer is GradScaler unscaling."""
        ratios = [before.l2[n] / (v / at_optimizer) for n, v in after_l2.items() if v > 0 and before.l2.get(n, 0) > 0]
        if not ratios:
            return 1.0
        base = statistics.median(ratios)
        uniform = all(abs(q - base) <= 1e-6 * base for q in ratios)
        return base if uniform and base > 1 and _is_power_of_two(base) else 1.0

    @staticmethod
    def _loss_tensor(pending: _Pending) -> Tensor | float | None:
        """The step's loss left on the device (no loss scale: a deferred step has none)."""
        if pending.handed_loss is not None:
            return pending.handed_loss
        if not pending.roots:
            return None
        if len(pending.roots) == 1:
            return pending.roots[0]
        device, dtype = pending.roots[0].device, functools.reduce(torch.promote_types, (r.dtype for r in pending.roots))
        return torch.stack([r.to(device, dtype).reshape(()) for r in pending.roots]).sum()

    @staticmethod
    def _loss(pending: _Pending, scale: float) -> float | None:
        if pending.handed_loss is not None:
            return float(pending.handed_loss)
        if not pending.roots:
            return None
        return float(sum(float(r) for r in pending.roots)) / scale

    def remove(self) -> None:
        """Remove every hook and drop every reference (idempotent)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self._roots.remove()
        self._clips.remove()
        self.named = []
        self._name_of = {}
        self.may_defer = None
        self.scaler = None
        self._pending = _Pending()
