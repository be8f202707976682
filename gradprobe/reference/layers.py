"""Multi-layer recurrent modules, drop-in equivalents of torch.nn.RNN/LSTM/GRU.

They have the same constructor signature, the same parameter names (so
``state_dict`` round-trips with torch.nn), the same default initialization
(with the same random stream), the same input conventions (``batch_first``,
unbatched 2-D input, :class:`~torch.nn.utils.rnn.PackedSequence`, initial
states) and raise the same kinds of errors, but compute everything with a
Python loop over time steps using :mod:`gradprobe.reference.functional`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradprobe.cell_modes import GATE_COUNT, RNN_NONLINEARITIES
from gradprobe.reference.functional import LayerWeights, State
from gradprobe.reference.sequence import DirectionTrace, join_steps, run_direction


@dataclass
class StackTrace:
    """Every layer's per-direction traces from :meth:`RecurrentBase.trace`.

    ``layers[l][d]`` is the :class:`DirectionTrace` of layer ``l``, direction
    ``d`` (0 forward, 1 reverse); ``batch_sizes`` is the packed layout;
    ``masks[l]`` the scaled dropout mask applied to layer ``l``'s input
    (``None`` for layer 0 and when dropout is off).
    """

    layers: list[list[DirectionTrace]]
    batch_sizes: list[int]
    masks: list[Tensor | None]


class RecurrentBase(nn.Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU`."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        for name, flag in (("bias", bias), ("batch_first", batch_first)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(flag).__name__}")
        for name, size in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(size, int):
                raise TypeError(f"{name} should be of type int, got: {type(size).__name__}")
            if size <= 0:
                raise ValueError(f"{name} must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if mode not in GATE_COUNT:
            raise ValueError("Unrecognized RNN mode: " + mode)

        self.mode = mode
        #: Called with each step's new state (``(h,)`` or ``(h, c)``) while the layers run (see
        #: :meth:`register_state_hook`); keyed by handle id.
        self._state_hooks: OrderedDict[int, Callable[[State, State], None]] = OrderedDict()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        factory = {"device": device, "dtype": dtype}
        gate_size = GATE_COUNT[mode] * hidden_size
        out_size = proj_size or hidden_size
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(self.num_directions):
                layer_input = input_size if layer == 0 else out_size * self.num_directions
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                shapes: list[tuple[str, tuple[int, ...]]] = [
                    ("weight_ih", (gate_size, layer_input)),
                    ("weight_hh", (gate_size, out_size)),
                ]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size:
                    shapes += [("weight_hr", (proj_size, hidden_size))]
                names = []
                for kind, shape in shapes:
                    setattr(self, kind + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(kind + suffix)
                self._all_weights.append(names)
        self.reset_parameters()

    # -- configuration ------------------------------------------------------

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters grouped per layer and direction, like torch.nn."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def reset_parameters(self) -> None:
        """torch.nn's default: every parameter uniform in ``±1/sqrt(hidden_size)``."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def layer_weights(self, layer: int, direction: int = 0, params: Mapping[str, Tensor] | None = None) -> LayerWeights:
        """The :class:`LayerWeights` of one layer and direction.

        Args:
            params: Tensors to use instead of the module's own parameters,
                keyed by parameter name (e.g. a fused module's live weights).
        """
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        source: Any = params if params is not None else self.__dict__.get("_parameters", {})

        def get(kind: str) -> Any:
            found: Any = source.get(kind + suffix)
            return found

        return LayerWeights(get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr"))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    # -- forward ------------------------------------------------------------

    def register_state_hook(self, hook: Callable[[State, State], None]) -> RemovableHandle:
        """Call ``hook(previous, state)`` with every step's previous and new state, in every layer and direction.

        The hook sees the live tensors of the graph (it may register tensor
        hooks on them, as :class:`gradprobe.fixes.HiddenGradClip` does) and
        returns nothing. The handle's ``remove()`` unregisters it.
        """
        handle = RemovableHandle(self._state_hooks)
        self._state_hooks[handle.id] = hook
        return handle

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles carry no state hooks (they belong to the live HiddenGradClip/FlowRegularizer)."""
        state: dict[str, Any] = super().__getstate__()  # type: ignore[no-untyped-call]
        state["_state_hooks"] = OrderedDict()
        return state

    def _run_state_hooks(self, previous: State, state: State) -> None:
        for hook in list(self._state_hooks.values()):
            hook(previous, state)

    def forward(self, input: Tensor | PackedSequence, hx: Any = None) -> tuple[Any, Any]:
        """Same contract as the torch.nn module's ``forward``."""
        output, final, _ = self._forward(input, hx, keep=False)
        return output, final

    def trace(
        self, input: Tensor | PackedSequence, hx: Any = None, params: Mapping[str, Tensor] | None = None
    ) -> tuple[Any, Any, StackTrace]:
        """Like :meth:`forward`, and also return every layer's per-step states.

        Args:
            params: Optional replacement parameters by name (see :meth:`layer_weights`).
        """
        return self._forward(input, hx, keep=True, params=params)

    def _forward(
        self, input: Tensor | PackedSequence, hx: Any, keep: bool, params: Mapping[str, Tensor] | None = None
    ) -> tuple[Any, Any, StackTrace]:
        packed = isinstance(input, PackedSequence)
        unbatched = False
        if packed:
            data, sizes, sorted_indices, unsorted_indices = input
            batch_sizes = [int(b) for b in sizes]
            if hx is not None:
                hx = self.map_hidden(
                    hx, lambda h: h.index_select(1, sorted_indices) if sorted_indices is not None else h
                )
        else:
            assert isinstance(input, Tensor)
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead"
                )
            unbatched = input.dim() == 2
            if unbatched:
                input = input.unsqueeze(0 if self.batch_first else 1)
                if hx is not None:
                    self._check_hidden_dims(hx, 2, "unbatched 2-D")
                    hx = self.map_hidden(hx, lambda h: h.unsqueeze(1))
            elif hx is not None:
                self._check_hidden_dims(hx, 3, "batched 3-D")
            if self.batch_first:
                input = input.transpose(0, 1)
            data = input.reshape(-1, input.size(-1)) if input.numel() else input.flatten(0, 1)
            batch_sizes = [input.size(1)] * input.size(0)
        self._check_input(data, self.layer_weights(0, 0, params).weight_ih)
        init = self.initial_states(data, batch_sizes[0], hx)

        traces: list[list[DirectionTrace]] = []
        layer_input = data
        finals: list[State] = []
        masks: list[Tensor | None] = [None]
        for layer in range(self.num_layers):
            if layer:
                mask = self.dropout_mask(layer_input)
                masks.append(mask)
                if mask is not None:
                    layer_input = layer_input * mask
            per_direction = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                trace = run_direction(
                    self.mode,
                    layer_input,
                    batch_sizes,
                    tuple(s[index] for s in init),
                    self.layer_weights(layer, direction, params),
                    reverse=bool(direction),
                    keep=keep,
                    state_hook=self._run_state_hooks if self._state_hooks else None,
                )
                per_direction.append(trace)
                finals.append(trace.final)
            traces.append(per_direction)
            if len(per_direction) == 1:
                steps = per_direction[0].outputs
            else:
                steps = [torch.cat(parts, dim=1) for parts in zip(*(t.outputs for t in per_direction))]
            layer_input = join_steps(steps, batch_sizes)

        final = tuple(torch.stack([f[k] for f in finals], dim=0) for k in range(len(finals[0])))
        if packed:
            output: Any = PackedSequence(layer_input, sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                final = tuple(f.index_select(1, unsorted_indices) for f in final)
        else:
            output = layer_input.view(len(batch_sizes), batch_sizes[0], -1)
            if self.batch_first:
                output = output.transpose(0, 1)
            if unbatched:
                output = output.squeeze(0 if self.batch_first else 1)
                final = tuple(f.squeeze(1) for f in final)
        hidden = final if self.mode == "LSTM" else final[0]
        return output, hidden, StackTrace(traces, batch_sizes, masks)

    def dropout_mask(self, layer_input: Tensor) -> Tensor | None:
        """The scaled keep-mask of inter-layer dropout, ``None`` when dropout is off.

        Drawn as ATen's CPU dropout draws it (``bernoulli_(1 - p)`` on a tensor
        of the input's shape, then ``/ (1 - p)``), so that under the same random
        state the reference stack drops the same units as torch.nn's.
        """
        if not (self.dropout and self.training):
            return None
        if self.dropout == 1:
            return torch.zeros_like(layer_input)
        return torch.empty_like(layer_input).bernoulli_(1 - self.dropout).div_(1 - self.dropout)

    # -- argument checks mirroring torch.nn ---------------------------------

    def _check_input(self, data: Tensor, weight: Tensor) -> None:
        if data.dtype != weight.dtype and not torch.is_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({data.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: model.to({data.dtype})"
            )
        if data.size(-1) != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {data.size(-1)}"
            )

    def _expected_state_shapes(self, batch: int) -> list[tuple[int, int, int]]:
        rows = self.num_layers * self.num_directions
        shapes = [(rows, batch, self.proj_size or self.hidden_size)]
        if self.mode == "LSTM":
            shapes.append((rows, batch, self.hidden_size))
        return shapes

    def initial_states(self, data: Tensor, batch: int, hx: Any) -> State:
        """The initial states of every layer direction, ``(h0[, c0])`` each ``[layers * directions, batch, *]``:
        ``hx`` checked against the expected shapes, or zeros like ``data`` when ``hx`` is ``None``."""
        shapes = self._expected_state_shapes(batch)
        if hx is None:
            return tuple(data.new_zeros(shape) for shape in shapes)
        states = tuple(hx) if self.mode == "LSTM" else (hx,)
        labels = ["Expected hidden size {}, got {}", "Expected hidden[1] size {}, got {}"]
        if self.mode == "LSTM":
            labels[0] = "Expected hidden[0] size {}, got {}"
        for state, shape, label in zip(states, shapes, labels):
            if tuple(state.shape) != shape:
                raise RuntimeError(label.format(shape, list(state.shape)))
        return states

    def _check_hidden_dims(self, hx: Any, dims: int, label: str) -> None:
        states = tuple(hx) if self.mode == "LSTM" else (hx,)
        if any(s.dim() != dims for s in states):
            got = ", ".join(f"{s.dim()}-D" for s in states)
            raise RuntimeError(f"For {label} input, hx should also be {dims}-D but got ({got}) tensors")

    def map_hidden(self, hx: Any, fn: Any) -> Any:
        """``fn`` applied to each tensor of a hidden state (``h`` or ``(h, c)``)."""
        if self.mode == "LSTM":
            return tuple(fn(h) for h in hx)
        return fn(hx)


class RNN(RecurrentBase):
    """Elman RNN with ``tanh`` or ``relu``; same signature as :class:`torch.nn.RNN`.

    Also ``nonlinearity="leaky_relu"`` (slope :data:`~gradprobe.reference.functional.LEAKY_SLOPE`
    below zero), which ``torch.nn.RNN`` lacks: a ReLU RNN whose units cannot die.
    Load a trained ``nn.RNN(nonlinearity="relu")``'s weights into it with
    ``load_state_dict`` (the keys are the same).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity not in RNN_NONLINEARITIES:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh', 'relu' or 'leaky_relu'.")
        super().__init__(RNN_NONLINEARITIES[self.nonlinearity], *args, **kwargs)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", nonlinearity='{self.nonlinearity}'" if self.nonlinearity != "tanh" else "")


class LSTM(RecurrentBase):
    """LSTM with optional ``proj_size``; same signature as :class:`torch.nn.LSTM`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("LSTM", *args, **kwargs)


class GRU(RecurrentBase):
    """GRU; same signature as :class:`torch.nn.GRU`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


__all__ = ["GRU", "LSTM", "RNN", "RecurrentBase", "StackTrace"]
