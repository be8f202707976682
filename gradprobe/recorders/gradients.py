"""Parameter-gradient norms, split per gate, and non-finite detection."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradprobe.discovery import RecurrentSite, gate_count, gate_names

_GATED = re.compile(r"(^|\.)(weight_ih|weight_hh|bias_ih|bias_hh)(_l\d+(_reverse)?)?$")


@dataclass
class GradientReading:
    """One pass over the gradients, its norms still on the device (no host read until :meth:`values`).

    Attributes:
        norms: float32, the parameters' L2 norms in :attr:`names` order, then the gate blocks' norms.
        names: The parameters that had a gradient.
        gates: ``(parameter, gate labels)`` of the gated weights, in the order their blocks follow.
        raw: Per parameter, its norm as the 0-d tensor torch's ``_foreach_norm`` gave (the gradient's dtype), as
            torch's ``clip_grad_norm_`` computes it; empty when the gradients did not allow that kernel.
        grads: The gradients, for the entry check of a non-finite norm (``None`` once dropped: a norm that is not
            finite then counts as a non-finite entry).
    """

    norms: Tensor
    names: list[str]
    gates: list[tuple[str, tuple[str, ...]]]
    raw: dict[str, Tensor] = field(default_factory=dict)
    grads: list[Tensor] | None = None
    _values: list[float] | None = None

    def values(self) -> list[float]:
        """The norms on the host (one transfer, kept)."""
        if self._values is None:
            self._values = self.norms.tolist()
        return self._values

    def l2(self, values: list[float] | None = None) -> dict[str, float]:
        """Per parameter, its gradient's L2 norm (from ``values``, this reading's norms read elsewhere, if given)."""
        got = self.values() if values is None else values
        return dict(zip(self.names, got[: len(self.names)]))

    def record(self, values: list[float] | None = None, loss_finite: bool = True) -> dict[str, Any]:
        """The step's gradient record (see :meth:`GradientRecorder.record`).

        A norm that is not finite means a non-finite entry, checked on the gradients while they are kept. Once
        they are dropped, an infinite norm may also be a float overflow of finite entries beyond ~1e19: such a
        parameter is listed only when nothing certain marks the step (no NaN norm, a finite ``loss_finite``),
        so an overflow never hides the parameters whose gradients really hold NaN.
        """
        got = self.values() if values is None else values
        per_param = self.l2(got)
        gates: dict[str, dict[str, float]] = {}
        offset = len(self.names)
        for name, labels in self.gates:
            gates[name] = dict(zip(labels, got[offset : offset + len(labels)]))
            offset += len(labels)
        total = math.sqrt(sum(v * v for v in per_param.values()))
        suspicious = [i for i, name in enumerate(self.names) if not math.isfinite(per_param[name])]
        if self.grads is not None:
            grads = self.grads
            suspicious = [i for i in suspicious if not bool(torch.isfinite(grads[i]).all())]
        else:
            certain = [i for i in suspicious if math.isnan(per_param[self.names[i]])]
            suspicious = certain if certain or not loss_finite else suspicious
        nonfinite = [self.names[i] for i in reversed(suspicious)]
        return {"grad_norm": total, "params": per_param, "gates": gates, "nonfinite_params": nonfinite}

    def drop_gradients(self) -> None:
        """Let the gradients go (a reading kept past its step)."""
        self.grads = None
        self.raw = {}


class GradientRecorder:
    """Reads ``p.grad`` of every trainable parameter after ``backward``.

    One pass over the gradients (one fused ``_foreach_norm`` where torch has
    it, the norms torch's ``clip_grad_norm_`` computes) gives the parameters'
    norms, their total and the non-finite check (a norm is finite when every
    entry is); a second kernel over the gated weights' blocks (contiguous
    views, no copy) gives the per-gate norms. One transfer brings them back,
    when they are needed (:meth:`measure` leaves them on the device).
    """

    def __init__(self, model: nn.Module, sites: list[RecurrentSite]) -> None:
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        for name, param in model.named_parameters():
            if param.requires_grad:
                self.names.append(name)
                self.params.append(param)
        prefixes = {site.name: site for site in sites}
        #: Parameter index -> its gate labels, for the gated weights and biases of the recurrent layers.
        self.gates: dict[int, tuple[str, ...]] = {}
        for index, name in enumerate(self.names):
            owner, _, leaf = name.rpartition(".")
            site = prefixes.get(owner) or (prefixes.get(type(model).__name__) if not owner else None)
            if site is None or site.mode is None or not _GATED.search(leaf):
                continue
            count = gate_count(site.mode)
            if count > 1 and self.params[index].shape[0] % count == 0:
                self.gates[index] = gate_names(site.mode)

    def measure(self) -> GradientReading | None:
        """The norms of the current gradients, left on the device (``None``: no parameter has a gradient)."""
        present = [(i, without_graph(p.grad)) for i, p in enumerate(self.params) if p.grad is not None]
        if not present:
            return None
        grads = [grad for _, grad in present]
        raw_norms = _raw_norms(grads)  # the norms torch's clip_grad_norm_ computes, bit for bit (its kernel, dtype)
        whole = torch.stack([as_float32(n) for n in raw_norms]) if raw_norms is not None else tensor_norms(grads)
        # each gate's rows of a gated parameter, one kernel per parameter
        per_gate = [
            on_device(gate_norms(grad, len(self.gates[i])), whole.device) for i, grad in present if i in self.gates
        ]
        norms = torch.cat([whole, *per_gate]) if per_gate else whole
        names = [self.names[i] for i, _ in present]
        return GradientReading(
            norms,
            names,
            [(self.names[i], self.gates[i]) for i, _ in present if i in self.gates],
            dict(zip(names, raw_norms)) if raw_norms is not None else {},
            grads,
        )

    def record(self) -> dict[str, Any]:
        """Norms of the current gradients, read now.

        Returns:
            ``{"grad_norm": total, "params": {name: norm}, "gates": {name:
            {gate: norm}}, "nonfinite_params": [names in backward order]}``;
            parameters without a gradient are left out.
        """
        reading = self.measure()
        return reading.record() if reading is not None else empty_record()

    def release(self) -> None:
        """Drop every reference to the model's parameters."""
        self.params = []
        self.names = []
        self.gates = {}


# A cheap step runs a few dozen small operations; at a microsecond or two of dispatch each, the ones that would
# change nothing (a float32 tensor made float32, a tensor without a graph detached) are not run.


def without_graph(tensor: Tensor) -> Tensor:
    """``tensor`` without its graph (itself when it has none)."""
    return tensor.detach() if tensor.requires_grad else tensor


def as_float32(tensor: Tensor) -> Tensor:
    """``tensor`` as float32 (itself when it is)."""
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def on_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device`` (itself when it is there)."""
    return tensor if tensor.device == device else tensor.to(device)


def empty_record() -> dict[str, Any]:
    """The gradient record of a step without any gradient."""
    return {"grad_norm": 0.0, "params": {}, "gates": {}, "nonfinite_params": []}


def _raw_norms(grads: list[Tensor]) -> list[Tensor] | None:
    """Each gradient's L2 norm from one ``torch._foreach_norm`` (``None`` where that kernel does not apply:
    several devices or dtypes, an empty, complex or sparse gradient, a tensor subclass)."""
    foreach = getattr(torch, "_foreach_norm", None)
    if foreach is None or len({(g.device, g.dtype) for g in grads}) != 1:
        return None
    if not all(type(g) is Tensor and g.layout == torch.strided and g.numel() and not g.is_complex() for g in grads):
        return None
    return list(foreach(grads, 2.0))


def output_sums(tensors: list[Tensor]) -> Tensor:
    """Per tensor, in order, a float32 number that is finite exactly when every entry of the tensor is: the sum
    of its entries (real and imaginary parts), accumulated in float32 or wider. For the non-finite check of a
    step's outputs; not logged.

    Inf or NaN anywhere makes the sum non-finite; finite entries overflow it only past ~3e38 in all. (A norm
    would overflow sooner: its squares past 1.8e19 an entry in float32, and a float16 norm past 65504, which
    a long half-precision sequence output of ordinary values reaches.) A loop over a cell leaves many outputs
    of one shape (a hundred ``[1, H]`` states for a batch-1 character RNN): those are stacked and summed in
    one kernel, where a kernel per tensor costs a microsecond or two each on a CPU.
    """
    if not tensors:
        return torch.empty(0, dtype=torch.float32)
    try:  # all alike (one site's chain): one stack, one kernel, no Python loop over them
        return _stacked_sums(tensors)
    except RuntimeError:  # shapes or devices differ: alike ones together
        pass
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault((tuple(tensor.shape), tensor.dtype, tensor.device), []).append(index)
    out = torch.empty(len(tensors), dtype=torch.float32, device=tensors[0].device)
    for indices in groups.values():
        out[indices] = on_device(_stacked_sums([tensors[i] for i in indices]), out.device)
    return out


def _stacked_sums(tensors: list[Tensor]) -> Tensor:
    """:func:`output_sums` of ``tensors``, which share shape, dtype and device."""
    with torch.no_grad():
        # a stack's one output is summed where it lies, not copied into a stack first
        alike = tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)
        if alike.is_complex():
            alike = torch.view_as_real(alike)
        wide = alike.dtype if alike.dtype in (torch.float32, torch.float64) else torch.float32
        sums = alike.reshape(len(tensors), -1).sum(dim=1, dtype=wide)
    return as_float32(sums)


def gate_norms(grad: Tensor, gates: int) -> Tensor:
    """The L2 norm of each of the ``gates`` equal blocks of rows of ``grad`` (its gates: ``grad.chunk(gates)``),
    float32."""
    with torch.no_grad():
        return as_float32(torch.linalg.vector_norm(grad.reshape(gates, -1), dim=1))


def tensor_norms(grads: list[Tensor], order: float = 2.0) -> Tensor:
    """The ``order``-norm of each tensor (2: L2, ``math.inf``: largest absolute entry), stacked as float32.

    One kernel per device where torch has one; an empty tensor's norm is 0.
    """
    detached = [without_graph(g) for g in grads]
    if order == math.inf:
        return _largest_entries(detached)
    foreach = getattr(torch, "_foreach_norm", None)
    if (
        foreach is not None
        and len({g.device for g in detached}) == 1
        and all(g.numel() and not g.is_complex() for g in detached)
    ):
        return torch.stack([as_float32(n) for n in foreach(detached, order)])
    return torch.stack(  # complex tensors keep their imaginary parts: their norm is real
        [
            torch.linalg.vector_norm(g if g.is_complex() else g.float(), order).float().cpu()
            if g.numel()
            else torch.zeros(())
            for g in detached
        ]
    )


def _largest_entries(grads: list[Tensor]) -> Tensor:
    """The largest absolute entry of each tensor as ``max(-min, max)``, stacked as float32 (0 for an empty one).

    One ``aminmax`` pass per tensor: torch's infinity-norm kernel (``vector_norm(g, inf)``, also through
    ``_foreach_norm``) takes about 25 times as long as its 2-norm on a CPU (LSTM H=256: 1.7 ms against
    0.07 ms), and the probe reads these every step. NaN propagates as in the norm.
    """
    peaks: list[Tensor] = []
    for g in grads:
        if not g.numel():
            peaks.append(torch.zeros((), device=g.device))
        elif g.is_complex():
            peaks.append(torch.linalg.vector_norm(g, math.inf).float())
        else:
            low, high = torch.aminmax(g)
            peaks.append(torch.maximum(-low, high).float())
    if len({p.device for p in peaks}) > 1:
        peaks = [p.cpu() for p in peaks]
    return torch.stack(peaks) if peaks else torch.zeros(0)
