"""A Hugging Face ``Trainer`` callback that probes the gradient health of a model's recurrent layers.

Usage::

    from gradprobe_transformers import GradprobeTrainerCallback
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[GradprobeTrainerCallback(log="run.log", every=50)])

The model may be any ``nn.Module`` whose forward returns a loss (a
``transformers`` model or a plain module returning ``{"loss": ...}``). The probe
is attached with the Trainer's optimizer (``gradprobe.attach(...,
optimizer=...)``, unwrapped from accelerate's ``AcceleratedOptimizer``), so it
records one step per optimizer step and sees the gradients right after
backward as well as at the optimizer. That matters here: the Trainer clips
(``max_grad_norm``, 1.0 by default) *before* ``on_pre_optimizer_step``, so a
callback reading gradients there sees them already clipped; the probe reports
the gradient as backward produced it, and the clipping with its threshold.

The findings are kept on the callback, appended to ``state.log_history`` (so
they land in ``trainer_state.json``) and summarized through ``transformers``'
logger. The Trainer calls no callback when ``train()`` raises: call
:meth:`GradprobeTrainerCallback.close` then (``try: trainer.train() finally:
callback.close()``). Written against gradprobe's public API only.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback
from transformers.utils import logging

import gradprobe

__all__ = ["GradprobeTrainerCallback"]

_logger = logging.get_logger(__name__)


class GradprobeTrainerCallback(TrainerCallback):
    """Probe gradient health during ``Trainer.train``.

    Args:
        log: Path of the JSON Lines run log (``None``: in memory only).
        every: Deep-probe every ``every`` optimizer steps.
        fix: ``off``, ``recommend`` or ``auto`` (see :func:`gradprobe.attach`).
        **attach_options: Any other :func:`gradprobe.attach` keyword.

    Attributes:
        probe: The live probe during training (``None`` before and after).
        findings: The findings of the last run, kept after the probe is closed.
        steps: Probe steps recorded in the last run.
    """

    def __init__(self, log: str | None = None, every: int = 50, fix: str = "off", **attach_options: Any) -> None:
        self.log_path = log
        self.every = every
        self.fix = fix
        self.attach_options = attach_options
        self.probe: gradprobe.Probe | None = None
        self.findings: list[gradprobe.Finding] = []
        self.steps = 0

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if model is None or optimizer is None:
            raise ValueError("gradprobe: the Trainer passed no model or optimizer to on_train_begin")
        self.findings = []
        self.probe = gradprobe.attach(
            model,
            log=self.log_path,  # under torch.distributed gradprobe writes one file per rank itself
            every=self.every,
            fix=self.fix,
            optimizer=optimizer,
            **self.attach_options,
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.probe is None:
            return
        self.close()
        state.log_history.append(
            {"step": state.global_step, "gradprobe_findings": [finding.to_dict() for finding in self.findings]}
        )
        for finding in self.findings:
            if finding.severity != "info":
                _logger.warning("gradprobe: %s", finding)

    def close(self) -> None:
        """Close the probe (idempotent). The Trainer calls no callback when ``train()`` raises: call this then."""
        probe = self.probe
        if probe is None:
            return
        self.probe = None
        probe.close()
        self.steps = probe.step_index
        self.findings = probe.findings
