"""The information-flow regularizer of Pascanu, Mikolov and Bengio (2013).

    Omega = sum_k ( ||g_(k+1) J_(k+1)|| / ||g_(k+1)|| - 1 )^2

with ``g_(k+1) = dE/dh_(k+1)`` held constant (computed from the loss, then
detached) and ``J_(k+1) = dh_(k+1)/dh_k``. Added to the loss with a weight, it
asks every step to pass the gradient back without shrinking it, which is what
lets a tanh RNN learn dependencies over many steps; the paper pairs it with
norm clipping (the regularizer can make gradients explode).

Here ``||.||`` is taken per batch row and averaged over rows, and the sum runs
over the recorded steps. For an LSTM the Jacobian is ``dh_t/dh_(t-1)`` with
``c_(t-1)`` held fixed (the paper's is for ``h``). Steps are recorded from
``*Cell`` modules and custom cells called in a loop and from gradprobe's
reference modules; a fused ``torch.nn`` module hides its steps: use its
reference twin (``gradprobe.reference.from_torch``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gradprobe.cell_calls import cell_call_states
from gradprobe.discovery import find_recurrent
from gradprobe.module_hooks import ProbeHookHandle, register_forward_hook

if TYPE_CHECKING:
    from typing_extensions import Self


def flow_penalty(pairs: Sequence[tuple[Tensor, Tensor]], grads: Sequence[Tensor | None], eps: float = 1e-12) -> Tensor:
    """``Omega`` for recorded steps ``(h_(k), h_(k+1))`` and fixed ``g_(k+1)`` (one per pair).

    Differentiable with respect to everything ``h_(k+1)`` depends on (the weights
    and ``h_k``); ``grads`` are treated as constants. Pairs whose ``g`` is
    missing or zero, or whose ``h_k`` is outside the graph, add nothing.
    """
    terms: list[Tensor] = []
    for (previous, new), g in zip(pairs, grads):
        if g is None or not previous.requires_grad:
            continue
        g = g.detach()
        norm_g = g.flatten(1).norm(dim=1)
        keep = norm_g > eps
        if not bool(keep.any()):
            continue
        (pulled,) = torch.autograd.grad(new, previous, grad_outputs=g, create_graph=True, retain_graph=True)
        ratio = pulled.flatten(1).norm(dim=1)[keep] / norm_g[keep]
        terms.append(((ratio - 1) ** 2).mean())
    if not terms:
        anchor = pairs[0][1] if pairs else torch.zeros(())
        return anchor.new_zeros(())
    return torch.stack(terms).sum()


class FlowRegularizer:
    """``weight * Omega`` for the steps of the latest forward pass; add it to the loss.

    Usage::

        reg = gradprobe.fixes.FlowRegularizer(model, weight=4.0)
        for x, y in data:
            loss = crit(model(x), y)
            (loss + reg(loss)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # as the paper does
            opt.step(); opt.zero_grad()

    Args:
        model: The model; recurrent modules are found as :func:`gradprobe.attach` finds them.
        weight: The regularizer's weight (the paper used about 4, with clipping).
        cells: Custom cells, as for :func:`gradprobe.attach`.
    """

    def __init__(self, model: nn.Module, weight: float = 4.0, cells: Iterable[str | nn.Module] = ()) -> None:
        if not (isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight >= 0):
            raise ValueError(f"weight must be >= 0, got {weight!r}")
        self.weight = float(weight)
        self.pairs: list[tuple[Tensor, Tensor]] = []
        self.handles: list[RemovableHandle | ProbeHookHandle] = []
        self.last: float | None = None  # the latest Omega, for logging
        self.fused: list[str] = []
        from gradprobe.reference.layers import RecurrentBase

        for site in find_recurrent(model, cells):
            if isinstance(site.module, RecurrentBase):
                self.handles.append(site.module.register_state_hook(self._on_state))
            elif site.kind == "cell":
                self.handles.append(register_forward_hook(site.module, self._on_cell, with_kwargs=True))
            elif site.kind == "stack":
                self.fused.append(site.name)
        if not self.handles:
            raise ValueError(
                f"no recurrent step the regularizer can see in {type(model).__name__} (fused modules: "
                f"{', '.join(self.fused) or 'none'}); use cells or gradprobe.reference.from_torch(module)"
            )

    def _on_state(self, previous: tuple[Tensor, ...], state: tuple[Tensor, ...]) -> None:
        if torch.is_grad_enabled() and previous:
            self.pairs.append((previous[0], state[0]))

    def _on_cell(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if not torch.is_grad_enabled():
            return
        state_in, new = cell_call_states(args, kwargs, output)
        if state_in and new:
            self.pairs.append((state_in[0], new[0]))

    def __call__(self, loss: Tensor) -> Tensor:
        """``weight * Omega`` for the steps recorded since the last call (then forgotten)."""
        pairs, self.pairs = self.pairs, []
        if not pairs or self.weight == 0:
            return loss.new_zeros(())
        news = [new for _, new in pairs]
        grads = torch.autograd.grad(loss, news, retain_graph=True, allow_unused=True)
        omega = flow_penalty(pairs, grads)
        self.last = float(omega.detach())
        return self.weight * omega

    def remove(self) -> None:
        """Stop recording (idempotent)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.pairs = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
