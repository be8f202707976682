"""How gradprobe reads a diagonal linear recurrence: the adapter a layer (or a plugin) provides.

A diagonal (selective) linear recurrence ``h_t = a_t * h_(t-1) + b_t`` --
an LRU, a minGRU/minLSTM, Griffin's RG-LRU, Mamba's ``exp(delta_t A)``,
mLSTM's forget gate -- has the per-step Jacobian ``diag(a_t)``. Knowing the
decays ``a_t`` is then knowing exactly how far a gradient travels through the
layer (:mod:`gradprobe.recorders.diagonal`), with no replay and no power
iteration. An adapter says how to compute them from the layer's live
parameters and the inputs of one call (the decays of selective layers depend on
the input); the layer's fused kernel or chunked scan is never looked into.

gradprobe's reference :class:`~gradprobe.reference.LRU` and
:class:`~gradprobe.reference.MinGRU` are read by the adapters of
:mod:`gradprobe.linear_adapters`; a plugin
claims other layers through the ``gradprobe_recurrence`` hook
(:mod:`gradprobe.hookspecs`; the ``gradprobe-transformers`` plugin does so for
``transformers``' Mamba, Mamba-2 and RecurrentGemma layers). A layer of your
own::

    from gradprobe.hookspecs import hookimpl
    from gradprobe.recurrence_adapter import RecurrenceAdapter

    @hookimpl
    def gradprobe_recurrence(module):
        if isinstance(module, MyDecayLayer):
            return RecurrenceAdapter("my-decay", transition=lambda m, args, kwargs: torch.sigmoid(m.gate(args[0])))
        return None
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # no torch import here: plugins import this module, and `gradprobe report` loads plugins
    from torch import Tensor

#: ``(module, args, kwargs) -> a_t``: the decays of one call, batch-first ``[B, T, N]`` (real or complex; ``N``
#: the channels, every state entry that decays on its own, flattened).
Transition = Callable[[Any, tuple[Any, ...], dict[str, Any]], "Tensor"]


@dataclass(frozen=True)
class RecurrenceAdapter:
    """How to read the transition of one kind of diagonal linear recurrence.

    Attributes:
        kind: A short name for the kind of layer (``"lru"``, ``"mingru"``, ``"mamba"``...), shown in the run
            log's ``meta`` and in findings.
        transition: Computes ``a_t`` for one captured call (called without gradients, on the probe's deep steps).
        static_decays: ``|a|`` per channel from the parameters alone, without data (for selective layers, at a
            zero input: the decays the biases set), or ``None`` when there is no such reading; ``gradprobe.lint``
            checks the initialization with it.
        input_gain: The per-channel gain on the input (an LRU's ``gamma``), checked against the normalization
            ``sqrt(1 - |a|^2)`` that keeps the state's scale, or ``None``.
        documented: The documented initialization, shown in findings (``"ring r_min=0.9..r_max=0.999"``).
    """

    kind: str
    transition: Transition
    static_decays: Callable[[Any], Tensor | None] | None = None
    input_gain: Callable[[Any], Tensor | None] | None = None
    documented: str = ""
