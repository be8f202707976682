"""One-call entry points: :func:`lint` (static) and :func:`check` (one deep probe on one batch)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gradprobe.config import Config
from gradprobe.discovery import find_recurrent, unwrap
from gradprobe.findings import DEFAULT_FAIL_ON, Finding, failing
from gradprobe.probe import LayerProfile, Probe, ProbeSettings
from gradprobe.rules.engine import RuleEngine


@dataclass
class Report:
    """The result of :func:`check`.

    Attributes:
        findings: Static and measured findings, most severe first.
        layers: Deep-probe profile per track (lists indexed by time step).
        loss: The loss value the probe back-propagated.
        fail_on: The lowest failing severity it was judged with (``fail-on``
            of the configuration; default ``warning``).
    """

    findings: list[Finding]
    layers: dict[str, LayerProfile] = field(default_factory=dict)
    loss: float | None = None
    fail_on: str = DEFAULT_FAIL_ON

    @property
    def healthy(self) -> bool:
        """No finding at or above ``fail_on`` (:func:`gradprobe.findings.failing`)."""
        return not failing(self.findings, self.fail_on)

    def __str__(self) -> str:
        lines = [f"gradprobe check: {'healthy' if self.healthy else 'problems found'} (loss {self.loss})"]
        for name, layer in self.layers.items():
            horizon = "none" if layer.horizon is None else f"{layer.horizon:.1f}"
            rate = "n/a" if layer.rate is None else f"{layer.rate:+.3f}"
            lines.append(f"  {name}: T={layer.seq_len} log-rate/step {rate} horizon {horizon} steps")
        lines.extend(f"  {finding}" for finding in self.findings)
        return "\n".join(lines)


def _engine(config: Config | Mapping[str, Any] | None, thresholds: Any, ignore: Iterable[str]) -> RuleEngine:
    return RuleEngine(config, thresholds=thresholds, ignore=ignore)


def lint(
    model: nn.Module,
    config: Config | Mapping[str, Any] | None = None,
    *,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    ignore: Iterable[str] = (),
    cells: Iterable[str | nn.Module] = (),
) -> list[Finding]:
    """Static checks of a model's recurrent layers (initialization), no data needed.

    Raises:
        gradprobe.discovery.NotRecurrentError: ``model`` has no recurrent layer.
    """
    model = unwrap(model)
    sites = find_recurrent(model, cells)
    return _engine(config, thresholds, ignore).lint(model, sites)


def default_loss(output: Any, seed: int = 0) -> Tensor:
    """``sum(y * r)`` for a fixed standard-normal ``r``: unit-variance gradient at every output."""
    y = output
    while isinstance(y, (tuple, list)):
        y = y[0]
    if isinstance(y, PackedSequence):
        y = y.data
    if not isinstance(y, Tensor):
        raise TypeError(f"cannot build a default loss from model output of type {type(y).__name__}; pass loss_fn")
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype).to(y.device)
    return (y * r).sum()


def check(
    model: nn.Module,
    inputs: Any,
    loss_fn: Callable[[Any], Tensor] | None = None,
    *,
    config: Config | Mapping[str, Any] | None = None,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    ignore: Iterable[str] = (),
    cells: Iterable[str | nn.Module] = (),
    dependency_length: int | None = None,
    seq_len: int | None = None,
    **probe_settings: Any,
) -> Report:
    """Deep-probe ``model`` on one batch and judge its gradient health.

    The model's parameter gradients, training mode and the global random state
    are left as they were.

    Args:
        model: The recurrent model.
        inputs: One batch: a tensor or PackedSequence (``model(inputs)``), a
            tuple/list (``model(*inputs)``) or a dict (``model(**inputs)``).
        loss_fn: Maps the model output to a scalar loss; by default a fixed
            random projection of the first output tensor (see :func:`default_loss`).
        config, thresholds, ignore: Rule configuration (see :class:`RuleEngine`).
        cells: Custom cells to probe.
        dependency_length: The dependency length (steps) the task needs: GP101
            warns when the gradient horizon is shorter (default: undeclared,
            or ``dependency-length`` from ``[tool.gradprobe]``).
        seq_len: Old name of ``dependency_length``.
        **probe_settings: Fields of :class:`gradprobe.probe.ProbeSettings`.
    """
    engine = _engine(config, thresholds, ignore)
    need = dependency_length if dependency_length is not None else seq_len
    settings = ProbeSettings(**{"every": 1, "dependency_length": need, **probe_settings})
    saved = [(p, p.grad) for p in model.parameters()]
    for p, _ in saved:
        p.grad = None
    try:
        with torch.random.fork_rng(devices=[]), Probe(model, None, settings, cells=cells, rules=engine) as probe:
            if isinstance(inputs, Mapping):
                output = model(**inputs)
            elif isinstance(inputs, (tuple, list)):
                output = model(*inputs)
            else:
                output = model(inputs)
            loss = loss_fn(output) if loss_fn is not None else default_loss(output)
            loss.backward()
            probe.step(loss)
        if probe.error:
            raise RuntimeError(f"gradprobe.check failed: {probe.error}") from probe.exception
        return Report(probe.findings, probe.layers, float(loss.detach()), engine.config.fail_on)
    finally:
        for p, grad in saved:
            p.grad = grad
