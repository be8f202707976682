"""Log gradprobe events to a Weights & Biases run.

Usage::

    import wandb
    from gradprobe_wandb import WandbSink
    run = wandb.init(project="rnn")
    with gradprobe.attach(model, optimizer=opt, sinks=[WandbSink(run)]) as probe:
        ...

What goes to the run, at the probe's step (``gradprobe/step``, declared as the
x-axis of every ``gradprobe/*`` key, so it never fights the run's own step):

- every step: ``gradprobe/loss``, ``gradprobe/grad_norm``, per-gate gradient
  norms ``gradprobe/gates/<parameter>/<gate>`` and, when the loop clipped,
  ``gradprobe/clip_threshold``;
- deep steps: ``gradprobe/<layer>/horizon``, ``.../decay_per_step``,
  ``.../jacobian_norm_mean``;
- saturation samples: ``gradprobe/<layer>/saturation/<gate>``;
- findings: a ``gradprobe/findings`` table (code, name, severity, layer, step,
  message; one row per code and layer, a later finding replacing an earlier
  one), logged again as it changes, and the count per severity in the run
  summary.

Written against gradprobe's public sink interface only (a callable taking each
event dict).
"""

from __future__ import annotations

import math
from typing import Any

from gradprobe.events import finite_number

__all__ = ["WandbSink"]

COLUMNS: list[str | int] = ["code", "name", "severity", "layer", "step", "message"]


class WandbSink:
    """A gradprobe sink writing to a W&B run.

    Args:
        run: The run from ``wandb.init()`` (anything with ``log``, ``summary``
            and ``define_metric``).
        prefix: Key prefix.
        gates: Log per-gate gradient norms every step (one key per gate and weight).
    """

    def __init__(self, run: Any, prefix: str = "gradprobe", gates: bool = True) -> None:
        self.run = run
        self.prefix = prefix
        self.gates = gates
        self.rows: dict[tuple[str, str], list[Any]] = {}  # one row per (code, layer): a later finding replaces it
        self.last_step = 0
        define = getattr(run, "define_metric", None)
        if callable(define):
            define(f"{prefix}/step")
            define(f"{prefix}/*", step_metric=f"{prefix}/step")

    def _log(self, values: dict[str, Any], step: int) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            self.run.log({f"{self.prefix}/step": step, **values})

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        raw_step = event.get("step")
        step = int(raw_step) if isinstance(raw_step, int) else self.last_step
        p = self.prefix
        if kind == "step":
            self.last_step = step
            values: dict[str, Any] = {
                f"{p}/loss": finite_number(event.get("loss")),
                f"{p}/grad_norm": finite_number(event.get("grad_norm")),
            }
            if self.gates:
                for param, gates in (event.get("gates") or {}).items():
                    for gate, norm in gates.items():
                        values[f"{p}/gates/{param}/{gate}"] = finite_number(norm)
            clip = event.get("clip")
            if isinstance(clip, dict):
                values[f"{p}/clip_threshold"] = finite_number(clip.get("threshold"))
            self._log(values, step)
        elif kind == "deep":
            layer = event["layer"]
            rate = finite_number(event.get("rate"))
            norms = [n for n in (finite_number(v) for v in event.get("jacobian_norms") or []) if n is not None]
            self._log(
                {
                    f"{p}/{layer}/horizon": finite_number(event.get("horizon")),
                    f"{p}/{layer}/decay_per_step": math.exp(rate) if rate is not None else None,
                    f"{p}/{layer}/jacobian_norm_mean": sum(norms) / len(norms) if norms else None,
                },
                step,
            )
        elif kind == "saturation":
            fractions = event.get("fractions") or {}
            self._log(
                {f"{p}/{event['layer']}/saturation/{gate}": finite_number(v) for gate, v in fractions.items()}, step
            )
        elif kind == "finding":
            self._add_finding(event, step)

    @property
    def counts(self) -> dict[str, int]:
        """Findings per severity (one per code and layer, as ``probe.findings`` counts them)."""
        counts = {"info": 0, "warning": 0, "error": 0}
        for row in self.rows.values():
            counts[row[2]] = counts.get(row[2], 0) + 1
        return counts

    def _add_finding(self, event: dict[str, Any], step: int) -> None:
        code, layer = str(event.get("code")), str(event.get("layer") or "")
        self.rows[(code, layer)] = [
            code,
            event.get("name"),
            str(event.get("severity")),
            layer,
            event.get("step"),
            event.get("message"),
        ]
        import wandb

        table = wandb.Table(columns=COLUMNS, data=list(self.rows.values()))
        self.run.log({f"{self.prefix}/step": step, f"{self.prefix}/findings": table})
        for name, count in self.counts.items():
            self.run.summary[f"{self.prefix}/findings/{name}"] = count
