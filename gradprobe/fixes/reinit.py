"""Re-initialization of recurrent layers (in place, per layer and direction, per gate block).

All functions accept torch.nn RNN/LSTM/GRU, their cells and the reference
modules, and return the names of the parameters they changed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gradprobe.cell_modes import GATE_COUNT
from gradprobe.discovery import mode_of


def _mode(module: nn.Module) -> str:
    mode = mode_of(module)
    if mode is None:
        raise TypeError(f"{type(module).__name__} is not a recurrent layer")
    return mode


def _named(module: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters(recurse=False) if n.startswith(prefix)]


def _init_blocks(module: nn.Module, prefix: str, init: Callable[[torch.Tensor], object]) -> list[str]:
    """Apply ``init`` to every gate block of every parameter named ``prefix*``; return their names."""
    mode = _mode(module)
    changed = []
    for name, param in _named(module, prefix):
        for block in param.data.chunk(GATE_COUNT[mode], dim=0):
            init(block)
        changed.append(name)
    return changed


@torch.no_grad()
def orthogonal_recurrent_(module: nn.Module, gain: float = 1.0) -> list[str]:
    """Each gate block of every ``weight_hh`` becomes ``gain`` times an orthogonal matrix (Saxe et al. 2014)."""
    return _init_blocks(module, "weight_hh", lambda block: nn.init.orthogonal_(block, gain=gain))


@torch.no_grad()
def identity_recurrent_(module: nn.Module, scale: float = 1.0) -> list[str]:
    """IRNN (Le et al. 2015): ``W_hh = scale * I`` and zero recurrent biases (ReLU RNNs)."""

    def identity(block: torch.Tensor) -> None:
        block.zero_()
        n = min(block.shape)
        block[:n, :n] += scale * torch.eye(n, dtype=block.dtype, device=block.device)

    return _init_blocks(module, "weight_hh", identity) + zero_bias_(module)


@torch.no_grad()
def xavier_input_(module: nn.Module, gain: float = 1.0) -> list[str]:
    """Glorot/Xavier uniform for every gate block of ``weight_ih``."""
    return _init_blocks(module, "weight_ih", lambda block: nn.init.xavier_uniform_(block, gain=gain))


@torch.no_grad()
def he_input_(module: nn.Module) -> list[str]:
    """Kaiming/He normal (fan-in, ReLU gain) for every gate block of ``weight_ih``."""
    return _init_blocks(module, "weight_ih", lambda block: nn.init.kaiming_normal_(block, nonlinearity="relu"))


@torch.no_grad()
def positive_bias_(module: nn.Module, value: float = 0.1) -> list[str]:
    """Input biases to ``value`` and recurrent biases to zero: ReLU pre-activations start above zero."""
    changed = []
    for name, param in module.named_parameters():
        if name.startswith("bias_ih"):
            param.fill_(value)
            changed.append(name)
        elif name.startswith("bias_hh"):
            param.zero_()
            changed.append(name)
    return changed


@torch.no_grad()
def zero_bias_(module: nn.Module) -> list[str]:
    """All biases to zero."""
    changed = []
    for name, param in _named(module, "bias_"):
        param.zero_()
        changed.append(name)
    return changed


def _forget_rows(module: nn.Module, name: str, param: torch.Tensor) -> torch.Tensor:
    hidden = param.shape[0] // 4
    return param.data[hidden : 2 * hidden]


def _input_rows(module: nn.Module, name: str, param: torch.Tensor) -> torch.Tensor:
    hidden = param.shape[0] // 4
    return param.data[:hidden]


@torch.no_grad()
def forget_bias_(module: nn.Module, value: float = 1.0) -> list[str]:
    """Effective LSTM forget-gate bias ``b_if + b_hf = value`` (Gers et al. 2000; Jozefowicz et al. 2015)."""
    if _mode(module) != "LSTM":
        raise TypeError("forget_bias_ applies to LSTM layers")
    changed = []
    for name, param in _named(module, "bias_ih"):
        _forget_rows(module, name, param).fill_(value)
        changed.append(name)
    for name, param in _named(module, "bias_hh"):
        _forget_rows(module, name, param).zero_()
        changed.append(name)
    return changed


@torch.no_grad()
def chrono_init_(module: nn.Module, max_timescale: int, generator: torch.Generator | None = None) -> list[str]:
    """Chrono initialization (Tallec & Ollivier 2018) for an LSTM expecting dependencies up to ``max_timescale``.

    Forget bias ``b_f = log(u)``, ``u ~ U[1, T_max - 1]``, input bias ``b_i = -b_f``
    (biases split between ``b_ih`` and zeroed ``b_hh``).
    """
    if _mode(module) != "LSTM":
        raise TypeError("chrono_init_ applies to LSTM layers")
    if max_timescale < 3:
        raise ValueError("max_timescale must be >= 3")
    changed = []
    for name, param in _named(module, "bias_ih"):
        forget = _forget_rows(module, name, param)
        u = torch.rand(forget.shape, generator=generator, dtype=torch.float64) * (max_timescale - 2) + 1
        values = torch.log(u).to(forget)
        forget.copy_(values)
        _input_rows(module, name, param).copy_(-values)
        changed.append(name)
    for name, param in _named(module, "bias_hh"):
        _forget_rows(module, name, param).zero_()
        _input_rows(module, name, param).zero_()
        changed.append(name)
    return changed


@torch.no_grad()
def lru_ring_(
    module: nn.Module,
    r_min: float = 0.9,
    r_max: float = 0.999,
    max_phase: float = 2 * torch.pi,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Orvieto et al.'s ring initialization of an LRU (``nu_log``, ``theta_log``, ``gamma_log``): ``|lambda|``
    uniform on the ring ``r_min..r_max`` (by area), phases in ``[0, max_phase]``, ``gamma = sqrt(1 - |lambda|^2)``.

    Raises:
        TypeError: ``module`` has no ``nu_log``/``theta_log``/``gamma_log`` parameters.
        ValueError: not ``0 < r_min <= r_max < 1``.
    """
    names = ("nu_log", "theta_log", "gamma_log")
    params = [getattr(module, name, None) for name in names]
    if not all(isinstance(p, torch.Tensor) for p in params):
        raise TypeError(f"{type(module).__name__} has no LRU parameters ({', '.join(names)})")
    if not 0 < r_min <= r_max < 1:
        raise ValueError(f"an LRU ring needs 0 < r_min <= r_max < 1, got {r_min}..{r_max}")
    nu_log, theta_log, gamma_log = params
    assert nu_log is not None and theta_log is not None and gamma_log is not None
    u1 = torch.rand(nu_log.shape, generator=generator, dtype=torch.float64)
    u2 = torch.rand(theta_log.shape, generator=generator, dtype=torch.float64)
    nu = -0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2)
    nu_log.copy_(torch.log(nu).to(nu_log.dtype))
    theta_log.copy_(torch.log(max_phase * u2 + 1e-12).to(theta_log.dtype))
    gamma_log.copy_(torch.log(torch.sqrt(1 - torch.exp(-nu) ** 2)).to(gamma_log.dtype))
    return list(names)
