"""gradprobe adapters for the linear recurrences of ``transformers``: Mamba, Mamba-2, RecurrentGemma's RG-LRU, RWKV.

Registered through the ``gradprobe`` entry-point group, so that
``gradprobe.attach(model)`` on a ``MambaForCausalLM``, ``Mamba2ForCausalLM``
``RecurrentGemmaForCausalLM`` or ``RwkvForCausalLM`` finds every mixer and measures it exactly
from its decays (see :mod:`gradprobe.recurrence_adapter`). Each adapter
recomputes the decays of one captured call from the mixer's own submodules
and parameters, as the eager ("slow") path of ``transformers`` does:

- Mamba: ``a_t = exp(Delta_t * A)`` per (channel, state entry), ``Delta_t =
  softplus(dt_proj(x_proj(conv(in_proj(x))))``, ``A = -exp(A_log)``;
- Mamba-2: ``a_t = exp(Delta_t * A)`` per head (every state entry of a head
  shares it), ``Delta_t`` the last ``num_heads`` columns of ``in_proj(x)`` plus
  ``dt_bias``, through softplus and clamped to ``time_step_limit``;
- RG-LRU: ``a_t = exp(-8 r_t softplus(recurrent_param))`` with ``r_t`` the
  recurrence gate, 0 where a document starts (``position_ids == 0``);
- RWKV (v4): the WKV state (numerator and denominator) decays by
  ``a = exp(-exp(time_decay))`` per channel, the same at every step.

This module imports neither torch nor ``transformers`` until a model is attached
(``gradprobe report`` loads plugins and must stay light); a class is matched by
name and by the package it comes from.
"""

from __future__ import annotations

from typing import Any

from gradprobe.hookspecs import hookimpl
from gradprobe.recurrence_adapter import RecurrenceAdapter


def _mask(x: Any, kwargs: dict[str, Any]) -> Any:
    """``x`` with padded positions zeroed, as the mixers do with their ``attention_mask``."""
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2 and tuple(mask.shape) == tuple(x.shape[:2]):
        return x * mask[..., None].to(x.dtype)
    return x


def _mamba_transition(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import torch
    from torch.nn import functional

    x = _mask(args[0], kwargs)
    steps = x.shape[1]
    hidden, _gate = module.in_proj(x).transpose(1, 2).chunk(2, dim=1)
    hidden = module.act(module.conv1d(hidden)[..., :steps])
    hidden = _mask(hidden.transpose(1, 2), kwargs)
    time_step = module.x_proj(hidden)[..., : module.time_step_rank]
    delta = functional.softplus(time_step @ module.dt_proj.weight.T + module.dt_proj.bias)  # [B, T, D]
    decay_rate = -torch.exp(module.A_log.float())  # [D, N]
    return torch.exp(delta.float()[..., None] * decay_rate).reshape(x.shape[0], steps, -1)


def _mamba_static(module: Any) -> Any:
    import torch
    from torch.nn import functional

    delta = functional.softplus(module.dt_proj.bias.detach().float())
    return torch.exp(-delta[:, None] * torch.exp(module.A_log.detach().float()))


def _mamba2_delta(module: Any, raw: Any) -> Any:
    import torch
    from torch.nn import functional

    delta = functional.softplus(raw.float() + module.dt_bias.float())
    low, high = getattr(module, "time_step_limit", (0.0, float("inf")))
    return torch.clamp(delta, min=low, max=high)


def _mamba2_transition(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import torch

    x = _mask(args[0], kwargs)
    raw = module.in_proj(x)[..., -module.num_heads :]  # the split's last part: dt, one per head
    return torch.exp(_mamba2_delta(module, raw) * -torch.exp(module.A_log.float()))  # [B, T, H]


def _mamba2_static(module: Any) -> Any:
    import torch

    raw = torch.zeros_like(module.dt_bias.detach())
    return torch.exp(_mamba2_delta(module, raw) * -torch.exp(module.A_log.detach().float()))


def _rglru_transition(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import torch
    from torch.nn import functional

    x = args[0]
    position_ids = args[1] if len(args) > 1 else kwargs.get("position_ids")
    batch, steps, width = x.shape
    heads, block = module.num_attention_heads, module.block_width
    rows = x.reshape(batch * steps, heads, block).permute(1, 0, 2)
    gate = torch.baddbmm(module.recurrent_gate_bias[:, None, :], rows, module.recurrent_gate_weight)
    gate = torch.sigmoid(gate.transpose(0, 1).reshape(batch, steps, width))
    decay = torch.exp(-8.0 * gate.float() * functional.softplus(module.recurrent_param.float()))
    if position_ids is not None:
        decay = decay * (position_ids[:, :, None] != 0)  # a document start resets the state
    return decay


def _rglru_static(module: Any) -> Any:
    import torch
    from torch.nn import functional

    gate = torch.sigmoid(module.recurrent_gate_bias.detach().float()).reshape(-1)
    return torch.exp(-8.0 * gate * functional.softplus(module.recurrent_param.detach().float()))


def _rwkv_decays(module: Any) -> Any:
    import torch

    return torch.exp(-torch.exp(module.time_decay.detach().float()))


def _rwkv_transition(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    x = args[0]
    return _rwkv_decays(module).expand(x.shape[0], x.shape[1], -1)


MAMBA = RecurrenceAdapter(
    "mamba",
    _mamba_transition,
    static_decays=_mamba_static,
    documented="Delta = softplus(dt_proj.bias) log-uniform in [1e-3, 1e-1], A = -(1..N)",
)
MAMBA2 = RecurrenceAdapter(
    "mamba2",
    _mamba2_transition,
    static_decays=_mamba2_static,
    documented="Delta = softplus(dt_bias) log-uniform in [1e-3, 1e-1], A = -(1..num_heads)",
)
RGLRU = RecurrenceAdapter(
    "rglru",
    _rglru_transition,
    static_decays=_rglru_static,
    documented="a^8 = exp(-8 softplus(recurrent_param)) uniform in [0.9, 0.999] (Griffin, c = 8)",
)

RWKV = RecurrenceAdapter(
    "rwkv",
    _rwkv_transition,
    static_decays=_rwkv_decays,
    documented="time_decay from -5 to 3 across channels (RWKV-4: decays exp(-exp(w)) from 0.993 down)",
)

#: The classes claimed, by (package prefix, class name).
ADAPTERS = {
    ("transformers.models.mamba.", "MambaMixer"): MAMBA,
    ("transformers.models.mamba2.", "Mamba2Mixer"): MAMBA2,
    ("transformers.models.recurrent_gemma.", "RecurrentGemmaRglru"): RGLRU,
    ("transformers.models.rwkv.", "RwkvSelfAttention"): RWKV,
}


@hookimpl
def gradprobe_recurrence(module: Any) -> RecurrenceAdapter | None:
    """The adapter of a ``transformers`` Mamba/Mamba-2 mixer, RG-LRU or RWKV time-mixing layer, else ``None``."""
    cls = type(module)
    for (package, name), adapter in ADAPTERS.items():
        if cls.__name__ == name and cls.__module__.startswith(package):
            return adapter
    return None
