"""The entry points: :func:`lint` (static), :func:`check` (one deep probe on one batch), :func:`attach` (a run).

They take the same rule keywords and declared needs (:class:`gradprobe.config.Options`),
and put the probe, the rule engine and the fixes together (the probe itself
knows neither rules nor fixes: it hands its events to the router).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gradprobe.bus import Sink
from gradprobe.config import Config, Options, renamed
from gradprobe.discovery import adapters_from, find_recurrent, unwrap
from gradprobe.findings import DEFAULT_FAIL_ON, Finding, failing
from gradprobe.fixes.runtime import StepFixer
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


def _rule_keywords(
    config: Config | Mapping[str, Any] | None,
    thresholds: Mapping[str, Mapping[str, float]] | None,
    ignore: Iterable[str],
    fail_on: str | None,
    cells: Iterable[str | nn.Module],
    dependency_length: int | None,
) -> dict[str, Any]:
    """The rule keywords every entry point takes, as :meth:`Options.of` takes them."""
    return {
        "config": config,
        "thresholds": thresholds,
        "ignore": ignore,
        "fail_on": fail_on,
        "cells": cells,
        "dependency_length": dependency_length,
    }


def lint(
    model: nn.Module,
    config: Config | Mapping[str, Any] | None = None,
    *,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    ignore: Iterable[str] = (),
    fail_on: str | None = None,
    cells: Iterable[str | nn.Module] = (),
    dependency_length: int | None = None,
    truncation: int | None = None,
    grad_clip: float | None = None,
    options: Options | None = None,
) -> list[Finding]:
    """Static checks of a model's recurrent layers (initialization), no data needed.

    Args:
        model: The recurrent model.
        config, thresholds, ignore, fail_on, cells, dependency_length, truncation, grad_clip: The rule keywords
            and declared needs (:class:`gradprobe.config.Options`), or all of them as ``options``.

    Raises:
        gradprobe.discovery.NotRecurrentError: ``model`` has no recurrent layer.
    """
    opts = Options.of(
        options,
        **_rule_keywords(config, thresholds, ignore, fail_on, cells, dependency_length),
        truncation=truncation,
        grad_clip=grad_clip,
    )
    model = unwrap(model)
    engine = RuleEngine(opts.rule_config())
    sites = find_recurrent(model, opts.cells, adapters_from(engine.call_hook))
    return engine.lint(model, sites)


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
    fail_on: str | None = None,
    cells: Iterable[str | nn.Module] = (),
    dependency_length: int | None = None,
    truncation: int | None = None,
    grad_clip: float | None = None,
    options: Options | None = None,
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
        config, thresholds, ignore, fail_on, cells, dependency_length, truncation, grad_clip: The rule keywords
            and declared needs (:class:`gradprobe.config.Options`), or all of them as ``options``.
            ``dependency_length`` is the dependency length (steps) the task needs: GP101 warns when the gradient
            horizon is shorter (default: undeclared, or ``dependency-length`` from ``[tool.gradprobe]``).
        seq_len: Deprecated name of ``dependency_length``.
        **probe_settings: Fields of :class:`gradprobe.probe.ProbeSettings`.

    Raises:
        RuntimeError: The probe failed while measuring (chained to the error).
    """
    opts = Options.of(
        options,
        **_rule_keywords(config, thresholds, ignore, fail_on, cells, renamed(dependency_length, seq_len, "seq_len")),
        truncation=truncation,
        grad_clip=grad_clip,
    )
    engine = RuleEngine(opts.rule_config())
    declared = {"dependency_length": opts.dependency_length, "truncation": opts.truncation, "grad_clip": opts.grad_clip}
    settings = ProbeSettings(**{"every": 1, **declared, **probe_settings})
    saved = [(p, p.grad) for p in model.parameters()]
    for p, _ in saved:
        p.grad = None
    try:
        with torch.random.fork_rng(devices=[]), Probe(model, None, settings, opts.cells, rules=engine) as probe:
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


def attach(
    model: nn.Module,
    log: str | os.PathLike[str] | None = None,
    every: int | str = 50,
    fix: str = "off",
    *,
    config: Config | Mapping[str, Any] | None = None,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    ignore: Iterable[str] = (),
    fail_on: str | None = None,
    cells: Iterable[str | nn.Module] = (),
    epsilon: float = 1e-3,
    saturation_every: int = 20,
    sample_rows: int = 4,
    deep_rows: int = 4,
    spectral_rows: int = 1,
    spectral_steps: int = 10,
    lyapunov_k: int = 4,
    seed: int = 0,
    dependency_length: int | None = None,
    truncation: int | None = None,
    grad_clip: float | None = None,
    options: Options | None = None,
    seq_len: int | None = None,
    sinks: Sequence[Sink] = (),
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
    budget: float = 0.03,
) -> Probe:
    """Attach a probe to every recurrent layer of ``model``.

    Args:
        model: Any module holding torch.nn RNN/LSTM/GRU layers, cells driven
            by a Python loop, gradprobe.reference modules, or custom cells.
        log: Path of the JSON Lines run log (``None``: keep results in memory).
        every: Deep-probe every ``every`` training steps (step 0 included), or
            ``"auto"``: the probe measures what deep and sampled steps cost and
            spaces them so that their extra time stays within ``budget``
            (:class:`gradprobe.quantities.BudgetSchedule`); each choice is a
            ``schedule`` event and ``probe.every`` holds the interval in force.
        fix: ``off`` (observe only), ``recommend`` (findings carry fixes), or
            ``auto`` (safe per-step fixes are applied in :meth:`Probe.step`).
        config: Rule thresholds and suppressions (:class:`gradprobe.config.Config`,
            a dict, or ``None`` to read ``[tool.gradprobe]`` from pyproject.toml).
        thresholds, ignore, fail_on: Per-rule thresholds, codes never reported and the
            lowest failing severity, layered over ``config``.
        cells: Custom cell modules (or their qualified names) to probe.
        epsilon: Relative level below which the propagated signal counts as
            gone, for the gradient horizon.
        saturation_every: Sample gate saturation every this many steps (0: only
            on deep steps).
        sample_rows: Batch rows used for sampled saturation.
        deep_rows: Batch rows per step (alive at every step) used for the
            propagation profile and deep-step saturation.
        spectral_rows: Batch rows per step for the Jacobian spectral-norm estimates.
        spectral_steps: Lanczos steps (products with J) per Jacobian spectral-norm estimate; the
            default 10 measured a mean error of 0.29% against exact SVDs (under 1% on each of 81
            layers), 12 halves it at 20% more Lanczos work.
        lyapunov_k: Lyapunov exponents computed per track on deep steps (QR method;
            0: none); in the deep event and ``LayerProfile.lyapunov``.
        seed: Seed of the probe's private random generator (never the global one).
        dependency_length: The dependency length (steps) the task needs: GP101
            warns when the gradient horizon is shorter. Default: undeclared
            (``dependency-length`` in ``[tool.gradprobe]``, else none).
        truncation: The truncated-BPTT window the loop uses, if any (GP402).
        grad_clip: The norm the loop clips gradients at, when it clips after
            ``probe.step()`` (GP401/GP102 then know the gradients are bounded).
        options: All of the rule keywords and declared needs at once
            (:class:`gradprobe.config.Options`); keywords given win.
        seq_len: Deprecated name of ``dependency_length``.
        sinks: Callables receiving every event dict (e.g. a TensorBoard writer).
        optimizer: The training optimizer. Its step hooks then record one probe
            step per ``optimizer.step()`` (``probe.step()`` becomes optional; the
            loss is taken from the backward pass), and the probe sees what the
            loop does between backward and the optimizer: clipping by norm or
            value (with the threshold) and AMP ``GradScaler`` unscaling. A step
            given a closure (L-BFGS, Lightning) is one probe step, recorded when
            the closure's first call returns, before the parameters move.
        budget: With ``every="auto"``: the extra time of deep and sampled steps
            allowed, as a share of a plain step (0.03: 3%).
        scaler: The AMP ``GradScaler``, when it is used (optional: the scale is
            otherwise found from the scaled loss).

    Returns:
        The :class:`Probe`; use it as a context manager or call ``close()``.

    Raises:
        gradprobe.discovery.NotRecurrentError: ``model`` has no recurrent layer.
    """
    opts = Options.of(
        options,
        **_rule_keywords(config, thresholds, ignore, fail_on, cells, renamed(dependency_length, seq_len, "seq_len")),
        truncation=truncation,
        grad_clip=grad_clip,
    )
    settings = ProbeSettings(
        every=every,
        fix=fix,
        epsilon=epsilon,
        saturation_every=saturation_every,
        sample_rows=sample_rows,
        deep_rows=deep_rows,
        spectral_rows=spectral_rows,
        spectral_steps=spectral_steps,
        lyapunov_k=lyapunov_k,
        seed=seed,
        dependency_length=opts.dependency_length,
        truncation=opts.truncation,
        grad_clip=opts.grad_clip,
        budget=budget,
    )
    return Probe(
        model,
        log,
        settings,
        opts.cells,
        rules=RuleEngine(opts.rule_config()),
        sinks=sinks,
        optimizer=optimizer,
        scaler=scaler,
        fixer=StepFixer,
    )
