"""GP1xx gradient flow: vanishing (GP101), exploding (GP102), non-finite (GP103)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from gradprobe.events import number
from gradprobe.findings import Finding
from gradprobe.hookspecs import hookimpl
from gradprobe.rules.context import RuleContext
from gradprobe.rules.registry import Rule

RECENT = 5  # deep events per layer a judgement rests on

GP101 = Rule(
    code="GP101",
    name="vanishing-gradient",
    severity="warning",
    summary="Gradient horizon shorter than the sequence (or required) length",
    thresholds={"min_horizon_fraction": 1.0, "error_horizon_fraction": 0.25},
    what_it_does=(
        "Measures how far back a gradient signal reaches: the propagation profile ||v^T dS_T/dS_{T-k}|| of each "
        "recurrent layer, its fitted decay rate, and the horizon where it falls below epsilon (1e-3). Flags layers "
        "whose median horizon over recent deep probes is shorter than min_horizon_fraction x the sequence length "
        "(error below error_horizon_fraction x)."
    ),
    why_bad=(
        "Products of per-step Jacobians with norm < 1 shrink exponentially: steps further back than the horizon "
        "receive no learning signal, so dependencies longer than the horizon cannot be learned."
    ),
    example="rnn = nn.RNN(1, 128)  # default init, tanh, sequences of 200 steps",
    use_instead=(
        "lstm = nn.LSTM(1, 128)\ngradprobe.fixes.reinit.chrono_init_(lstm, max_timescale=200)\n"
        "gradprobe.fixes.reinit.orthogonal_recurrent_(lstm)"
    ),
)

GP102 = Rule(
    code="GP102",
    name="exploding-gradient",
    severity="error",
    summary="Gradient signal grows through time, or gradient norm spikes",
    thresholds={"max_growth": 100.0, "spike_factor": 10.0, "spike_window": 50, "min_history": 10},
    what_it_does=(
        "Flags a propagation profile whose fitted growth over the sequence exceeds max_growth, and training steps "
        "whose total gradient norm is more than spike_factor x the running median of the last spike_window steps."
    ),
    why_bad="Per-step Jacobians with norm > 1 multiply up: updates become huge, loss jumps, weights diverge or hit NaN.",
    example="with torch.no_grad():\n    rnn.weight_hh_l0.mul_(3)  # spectral norm ~3",
    use_instead=(
        "clip = gradprobe.fixes.ClipGradNorm()        # threshold from observed norms\n"
        "loss.backward(); clip(model.parameters(), total_norm); opt.step()\n"
        "# or: gradprobe.attach(model, fix='auto')"
    ),
)

GP103 = Rule(
    code="GP103",
    name="non-finite-gradient",
    severity="error",
    summary="Inf/NaN in activations, loss or gradients",
    what_it_does="Reports the first step where a recurrent output, the loss or a parameter gradient is Inf or NaN, and where it appeared first.",
    why_bad="One non-finite update poisons every weight it touches; training cannot recover.",
    example="loss = crit(model(x)[0], y)   # x holds a NaN, or activations overflow",
    use_instead="gradprobe.attach(model, fix='auto')     # skips non-finite updates\n# or gradprobe.fixes.NonFiniteGuard('random', step_size=1e-2)",
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    for rule in (GP101, GP102, GP103):
        register(rule)


@hookimpl
def gradprobe_observe(event: dict[str, Any], context: RuleContext) -> Iterable[Finding] | None:
    kind = event.get("kind")
    if kind == "deep":
        recent = context.state("GP1xx").setdefault("deep", {})
        history = recent.setdefault(event["layer"], deque(maxlen=RECENT))
        history.append(
            {
                "step": event.get("step"),
                "horizon": number(event.get("horizon")),
                "rate": number(event.get("rate")),
                "seq_len": int(event.get("seq_len", 0)),
                "mode": event.get("mode"),
                "module": event.get("module"),
            }
        )
        _record_growth(event, context)
        return None
    if kind == "step":
        return [f for f in (_nonfinite(event, context), _spike(event, context)) if f is not None]
    return None


def _record_growth(event: dict[str, Any], context: RuleContext) -> None:
    """Share sustained growth with GP401 at observe time (summaries run in no fixed order)."""
    rate = number(event.get("rate"))
    growth = context.state("signals").setdefault("growth", {})
    if rate is not None and rate > 0 and math.exp(rate * max(int(event.get("seq_len", 2)) - 1, 1)) > context.threshold("GP102", "max_growth"):
        growth[event["layer"]] = math.exp(rate * (int(event["seq_len"]) - 1))
    else:
        growth.pop(event["layer"], None)


def _nonfinite(event: dict[str, Any], context: RuleContext) -> Finding | None:
    bad = event.get("nonfinite")
    if not bad:
        return None
    where = bad.get("where")
    place = {
        "forward": f"in the output of {bad.get('layer')}",
        "loss": "in the loss",
        "gradient": f"in the gradient of {bad.get('parameter')}",
    }.get(where, "")
    return context.finding(
        "GP103",
        f"non-finite values first {place} at step {event.get('step')} ({bad.get('count', 0)} parameter gradients affected)",
        layer=bad.get("layer") or _owner(bad.get("parameter")),
        step=event.get("step"),
        evidence={"where": where, "parameter": bad.get("parameter"), "count": bad.get("count", 0)},
        fix="skip the update when gradients are non-finite (attach(..., fix='auto') or fixes.NonFiniteGuard), lower the learning rate, clip gradients; check inputs for NaN",
    )


def _owner(parameter: str | None) -> str | None:
    if not parameter:
        return None
    owner, _, _ = parameter.rpartition(".")
    return owner or None


def _spike(event: dict[str, Any], context: RuleContext) -> Finding | None:
    norm = number(event.get("grad_norm"))
    state = context.state("GP102")
    window = state.get("window")
    if window is None:
        window = state["window"] = deque(maxlen=int(context.threshold("GP102", "spike_window")))
    if norm is None or not math.isfinite(norm):
        return None
    finding = None
    if len(window) >= context.threshold("GP102", "min_history"):
        median = statistics.median(window)
        factor = context.threshold("GP102", "spike_factor")
        if median > 0 and norm > factor * median:
            signals = context.state("signals")
            signals["spikes"] = signals.get("spikes", 0) + 1
            signals["max_spike_ratio"] = max(signals.get("max_spike_ratio", 0.0), norm / median)
            clipped = context.meta.get("settings", {}).get("fix") == "auto"
            finding = context.finding(
                "GP102",
                f"gradient norm {norm:.3g} at step {event.get('step')} is {norm / median:.0f}x the running median {median:.3g}"
                + ("; the probe clips such steps (fix='auto')" if clipped else ""),
                step=event.get("step"),
                severity="info" if clipped else "warning",
                evidence={"grad_norm": norm, "running_median": median, "ratio": norm / median},
                fix="clip gradients by norm (fixes.ClipGradNorm, threshold from observed norms) or attach(..., fix='auto')",
            )
    window.append(norm)
    return finding


def _judged_length(context: RuleContext, observed: int) -> int:
    required = context.meta.get("settings", {}).get("seq_len")
    return int(required) if required else observed


@hookimpl
def gradprobe_summarize(context: RuleContext) -> Iterable[Finding] | None:
    found: list[Finding | None] = []
    for layer, history in context.state("GP1xx").get("deep", {}).items():
        latest = history[-1]
        seq_len = _judged_length(context, max(h["seq_len"] for h in history))
        horizons = [math.inf if h["horizon"] is None else h["horizon"] for h in history]
        horizon = statistics.median(horizons)
        rates = [h["rate"] for h in history if h["rate"] is not None]
        rate = statistics.median(rates) if rates else None
        evidence = {
            "horizon": None if math.isinf(horizon) else round(horizon, 2),
            "seq_len": seq_len,
            "rate": rate,
            "decay_per_step": math.exp(rate) if rate is not None else None,
            "probes": len(history),
        }
        if horizon < context.threshold("GP101", "min_horizon_fraction") * seq_len:
            severity = "error" if horizon < context.threshold("GP101", "error_horizon_fraction") * seq_len else "warning"
            per_step = f" (signal x{math.exp(rate):.2f} per step)" if rate is not None else ""
            found.append(
                context.finding(
                    "GP101",
                    f"gradient horizon {horizon:.0f} steps < sequence length {seq_len} in {layer}{per_step}",
                    layer=layer,
                    step=latest["step"],
                    severity=severity,
                    evidence=evidence,
                    fix=_vanishing_fix(latest["mode"], seq_len),
                )
            )
        if rate is not None and rate > 0:
            growth = math.exp(rate * max(latest["seq_len"] - 1, 1))
            if growth > context.threshold("GP102", "max_growth"):
                found.append(
                    context.finding(
                        "GP102",
                        f"gradient signal grows x{math.exp(rate):.2f} per step (x{growth:.3g} over {latest['seq_len']} steps) in {layer}",
                        layer=layer,
                        step=latest["step"],
                        evidence={**evidence, "growth": growth},
                        fix="clip gradients by norm (attach(..., fix='auto') or fixes.ClipGradNorm); re-initialize recurrent weights orthogonally (fixes.reinit.orthogonal_recurrent_)",
                    )
                )
    return found


def _vanishing_fix(mode: str | None, seq_len: int) -> str:
    if mode == "LSTM":
        return (
            f"chrono init (fixes.reinit.chrono_init_(lstm, max_timescale={seq_len})) or forget-gate bias 1, orthogonal "
            "recurrent weights; fixes.apply(model, findings) does both"
        )
    if mode == "GRU":
        return "orthogonal recurrent weights (fixes.reinit.orthogonal_recurrent_); or an LSTM with chrono init"
    if mode == "RNN_RELU":
        return "identity recurrent init (IRNN, fixes.reinit.identity_recurrent_); or an LSTM/GRU"
    if mode == "RNN_TANH":
        return "orthogonal recurrent weights (fixes.reinit.orthogonal_recurrent_), or switch to an LSTM/GRU; residual connections for deep stacks"
    return "re-initialize recurrent weights orthogonally, or use a gated cell (LSTM/GRU)"
