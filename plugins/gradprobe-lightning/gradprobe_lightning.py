"""A Lightning callback that probes the gradient health of a LightningModule's recurrent layers.

Usage::

    from gradprobe_lightning import GradprobeCallback
    trainer = lightning.Trainer(callbacks=[GradprobeCallback(log="run.log", every=50)])

The probe is attached to the module with the trainer's optimizer
(``gradprobe.attach(..., optimizer=...)``), so there is one probe step per
optimizer step whatever the loop does around it: gradient accumulation (the
step sees the accumulated gradients and the summed, already divided loss),
``gradient_clip_val`` (clipping runs inside Lightning's closure and is seen
with its threshold), mixed precision (the ``GradScaler`` scale is divided out).
The deep steps' horizons and the findings go to the trainer's loggers; the probe
is closed when fitting ends and when an exception stops it.

It is written against gradprobe's public API only.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl

import gradprobe
from gradprobe.events import finite_number

__all__ = ["GradprobeCallback"]


class GradprobeCallback(pl.Callback):
    """Probe gradient health during ``Trainer.fit``.

    Args:
        log: Path of the JSON Lines run log (``None``: in memory only).
        every: Deep-probe every ``every`` optimizer steps.
        fix: ``off``, ``recommend`` or ``auto`` (see :func:`gradprobe.attach`).
        log_to_loggers: Send deep-step figures and findings to the trainer's loggers.
        **attach_options: Any other :func:`gradprobe.attach` keyword (``config``,
            ``dependency_length``, ``cells``, ...).

    Attributes:
        probe: The live probe during fit (``None`` before and after).
        findings: The findings of the last fit, kept after the probe is closed.
    """

    def __init__(
        self,
        log: str | None = None,
        every: int = 50,
        fix: str = "off",
        *,
        log_to_loggers: bool = True,
        **attach_options: Any,
    ) -> None:
        self.log_path = log  # not ``self.log``: Lightning sets ``callback.log`` to the module's ``log``
        self.every = every
        self.fix = fix
        self.log_to_loggers = log_to_loggers
        self.attach_options = attach_options
        self.probe: gradprobe.Probe | None = None
        self.findings: list[gradprobe.Finding] = []
        self.steps = 0
        self._trainer: pl.Trainer | None = None

    # -- Lightning hooks ------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = trainer.optimizers
        if len(optimizers) > 1:
            pl.utilities.rank_zero_warn(
                f"gradprobe: {len(optimizers)} optimizers; probe steps follow the first one's steps"
            )
        self._trainer = trainer
        sinks = [self._to_loggers] if self.log_to_loggers else []
        self.findings = []
        self.probe = gradprobe.attach(
            pl_module,
            log=self.log_path,
            every=self.every,
            fix=self.fix,
            optimizer=optimizers[0] if optimizers else None,
            sinks=sinks,
            **self.attach_options,
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close()

    # -- results --------------------------------------------------------------

    def _close(self) -> None:
        probe = self.probe
        if probe is None:
            return
        self.probe = None
        probe.close()
        self.steps = probe.step_index
        self.findings = probe.findings
        self._findings_to_loggers(self.findings)
        self._trainer = None

    def _loggers(self) -> list[Any]:
        trainer = self._trainer
        if trainer is None or not trainer.is_global_zero:
            return []
        return list(trainer.loggers)

    def _to_loggers(self, event: dict[str, Any]) -> None:
        """A probe sink: deep-step figures as metrics, at the trainer's global step."""
        if event.get("kind") != "deep":
            return
        loggers = self._loggers()
        if not loggers or self._trainer is None:
            return
        layer = event["layer"]
        metrics: dict[str, float] = {}
        horizon, rate = finite_number(event.get("horizon")), finite_number(event.get("rate"))
        if horizon is not None:
            metrics[f"gradprobe/{layer}/horizon"] = horizon
        if rate is not None:
            metrics[f"gradprobe/{layer}/decay_per_step"] = math.exp(rate)
        if metrics:
            for logger in loggers:
                logger.log_metrics(metrics, step=self._trainer.global_step)

    def _findings_to_loggers(self, findings: list[gradprobe.Finding]) -> None:
        loggers = self._loggers()
        if not loggers or self._trainer is None:
            return
        step = self._trainer.global_step
        counts = {f"gradprobe/findings/{severity}": 0.0 for severity in ("info", "warning", "error")}
        for finding in findings:
            counts[f"gradprobe/findings/{finding.severity}"] += 1
        rows = [[f.code, f.name, f.severity, f.layer or "", f.message] for f in findings]
        for logger in loggers:
            logger.log_metrics(counts, step=step)
            if not rows:
                continue
            log_text = getattr(logger, "log_text", None)  # WandbLogger: a table
            experiment = getattr(logger, "experiment", None)
            if callable(log_text):
                log_text(key="gradprobe/findings", columns=["code", "name", "severity", "layer", "message"], data=rows)
            elif experiment is not None and hasattr(experiment, "add_text"):  # TensorBoardLogger
                text = "\n\n".join(f"**{c} {n}** [{s}] {layer}: {m}" for c, n, s, layer, m in rows)
                experiment.add_text("gradprobe/findings", text, step)
