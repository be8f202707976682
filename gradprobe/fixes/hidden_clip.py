"""Clipping of the gradient with respect to the hidden state as it flows back through time (Graves 2013).

Graves clipped "the derivative of the loss with respect to the network inputs to
the LSTM layers" to [-1, 1] during backpropagation, so that no single step's
gradient can blow up what reaches earlier steps. :class:`HiddenGradClip`
clamps ``dL/dh_t`` element-wise to ``[-value, value]`` wherever the module
lets the probe reach it:

- ``*Cell`` modules and custom cells called in a Python loop, and gradprobe's
  reference ``RNN``/``LSTM``/``GRU``: at **every time step**. The total
  ``dL/dh_t`` (from the output at ``t`` and from step ``t+1``) is clamped
  before it flows into step ``t`` and on to ``h_(t-1)``.
- fused ``torch.nn.RNN/LSTM/GRU``: the kernel carries the gradient from step
  ``t`` to ``t-1`` inside itself, out of reach. Only the gradients *entering*
  the module are clamped: ``dL/d output_t`` for every step (from the layers or
  the loss above) and ``dL/dh_n`` (``dL/dc_n`` is left alone). For clipping
  through time on a fused model, run its reference twin
  (``gradprobe.reference.from_torch``).

It changes training (unsafe): an explicit remedy, never applied by ``fix="auto"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradprobe.cell_calls import cell_call_states
from gradprobe.discovery import find_recurrent
from gradprobe.module_hooks import ProbeHookHandle, register_forward_hook

if TYPE_CHECKING:
    from typing_extensions import Self

#: What the clip reaches in each kind of module (also in the fix event).
REACH = {
    "cell": "dL/dh_t at every time step",
    "reference": "dL/dh_t at every time step, every layer and direction",
    "fused": "dL/d output_t of every step and dL/dh_n only (the fused kernel's gradient through time is out of reach)",
}


class HiddenGradClip:
    """Clamp ``dL/dh_t`` to ``[-value, value]`` during backpropagation; a context manager.

    Args:
        model: The model; its recurrent modules are found as :func:`gradprobe.attach` finds them.
        value: The bound (Graves used 1).
        cells: Custom cells (qualified names or modules), as for :func:`gradprobe.attach`.
        probe: A probe to log the fix in (a ``fix`` event named ``clip-hidden-grad``,
            at attach and with the count of clamped entries at :meth:`remove`).

    Attributes:
        reach: Per recurrent module, what the clip reaches there (see :data:`REACH`).
    """

    def __init__(
        self, model: nn.Module, value: float = 1.0, cells: Iterable[str | nn.Module] = (), probe: Any = None
    ) -> None:
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"value must be a positive bound, got {value!r}")
        self.value = float(value)
        self.probe = probe
        self.handles: list[RemovableHandle | ProbeHookHandle] = []
        self._clamped: list[Tensor] = []
        self.reach: dict[str, str] = {}
        from gradprobe.reference.layers import RecurrentBase

        for site in find_recurrent(model, cells):
            module = site.module
            if isinstance(module, RecurrentBase):
                self.handles.append(module.register_state_hook(self._on_state))
                self.reach[site.name] = REACH["reference"]
            elif site.kind == "stack":
                self.handles.append(register_forward_hook(module, self._on_fused_output))
                self.reach[site.name] = REACH["fused"]
            elif site.kind == "cell":
                self.handles.append(register_forward_hook(module, self._on_cell_output, with_kwargs=True))
                self.reach[site.name] = REACH["cell"]
        self._log(applied=True)

    # -- hooks -----------------------------------------------------------------

    def _clamp(self, grad: Tensor) -> Tensor:
        self._clamped.append((grad.abs() > self.value).sum())
        if len(self._clamped) > 256:
            self._clamped = [torch.stack([c.to(self._clamped[0].device) for c in self._clamped]).sum()]
        return grad.clamp(-self.value, self.value)

    def _watch(self, tensor: Tensor) -> None:
        if tensor.requires_grad:
            tensor.register_hook(self._clamp)

    def _on_state(self, previous: tuple[Tensor, ...], state: tuple[Tensor, ...]) -> None:
        self._watch(state[0])

    def _on_cell_output(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        _, state = cell_call_states(args, kwargs, output)
        if state:
            self._watch(state[0])

    def _on_fused_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        out, hidden = output
        self._watch(out.data if isinstance(out, PackedSequence) else out)
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden
        self._watch(h_n)

    # -- results ---------------------------------------------------------------

    @property
    def clamped(self) -> int:
        """Gradient entries clamped so far (one device transfer)."""
        if not self._clamped:
            return 0
        return int(sum(int(c) for c in self._clamped))

    def _log(self, applied: bool, **extra: Any) -> None:
        if self.probe is not None and not getattr(self.probe, "closed", True):
            self.probe.log_fix("clip-hidden-grad", applied=applied, value=self.value, reach=dict(self.reach), **extra)

    def remove(self) -> None:
        """Stop clipping (idempotent); log the number of clamped entries in the probe."""
        if not self.handles:
            return
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self._log(applied=True, clamped=self.clamped)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
