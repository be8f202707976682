"""GP101 vanishing-gradient: a gradient horizon too short for what the task needs, with the evidence."""

from __future__ import annotations

import math
from collections.abc import Callable

from gradprobe.actions import action
from gradprobe.cell_modes import is_relu
from gradprobe.findings import Finding, FixAction, RuleResult
from gradprobe.hookspecs import hookimpl
from gradprobe.rule_spec import Rule
from gradprobe.rules.context import RuleContext
from gradprobe.rules.evidence import VANISHING_THRESHOLDS, VanishingEvidence, short_horizons

RULE = Rule(
    code="GP101",
    name="vanishing-gradient",
    severity="info",
    raises=("info", "warning", "error"),
    summary="Gradient horizon shorter than the task needs (info without evidence that it hurts)",
    thresholds=dict(VANISHING_THRESHOLDS),
    what_it_does=(
        "Measures how far back a gradient signal reaches: the propagation profile ||v^T dS_T/dS_{T-k}|| of each "
        "recurrent layer, its fitted decay rate, and the horizon where it falls below epsilon (1e-3), as the median "
        "over recent deep probes. A short horizon alone is reported as info. It becomes a warning with one kind of "
        "evidence that it hurts, and an error with two (or a horizon under error_horizon_fraction x a declared need):\n"
        "- declared: the horizon is below min_horizon_fraction x the dependency length the task needs "
        "(dependency_length= in attach/check/assert_healthy/the pytest marker, dependency-length in [tool.gradprobe]);\n"
        "- structure: at least min_starved_fraction of the time steps get less than epsilon x the largest gradient "
        "in every direction of the layer (the loss reads only the last steps of a long sequence), and the loss is not "
        "learning: a cause without a symptom is information while the loss improves (at least min_improvement of it "
        "gone, and still falling between the third and last quarter of the run);\n"
        "- stalled loss: after stall_min_steps steps, less than min_improvement of the starting loss is gone while "
        "the horizon is shorter than the sequence;\n"
        "- collapse: the horizon fell below collapse_fraction x its value in the first deep probes."
    ),
    why_bad=(
        "Products of per-step Jacobians with norm < 1 shrink exponentially: steps further back than the horizon "
        "receive no learning signal, so dependencies longer than the horizon cannot be learned. A per-token loss "
        "(language models) injects gradient at every step, so a short horizon there costs little: default-initialized "
        "LSTMs and GRUs carry gradients for ~10 steps and learn most such tasks."
    ),
    known_problems=(
        "The sequence length and the BPTT window are not needs: declare the dependency length when the task has one. "
        "A loss on a window that converged early and then sat still looks like a loss stuck at a baseline: the "
        "structure evidence then warns; a declared dependency length decides. "
        "The stalled-loss evidence needs a loss passed to probe.step(loss)."
    ),
    example="rnn = nn.RNN(1, 128)  # default init, tanh; the label depends on step 0 of 200",
    use_instead=(
        "lstm = nn.LSTM(1, 128)\ngradprobe.fixes.reinit.chrono_init_(lstm, max_timescale=200)\n"
        "gradprobe.fixes.reinit.orthogonal_recurrent_(lstm)"
    ),
    fix_safety="Re-initialization is unsafe (it changes the weights): only gradprobe.fixes.apply runs it.",
    references="Bengio, Simard, Frasconi 1994; Pascanu, Mikolov, Bengio 2013; Tallec, Ollivier 2018 (chrono init).",
)


@hookimpl
def gradprobe_register_rules(register: Callable[[Rule], None]) -> None:
    register(RULE)


@hookimpl
def gradprobe_summarize(context: RuleContext) -> RuleResult:
    return [
        _finding(context, evidence) for evidence in short_horizons(context, linear_recurrences=False)
    ]  # GP501 judges the decays of a linear recurrence


def _finding(context: RuleContext, e: VanishingEvidence) -> Finding | None:
    track = e.track
    per_step = f" (signal x{math.exp(e.rate):.2f} per step)" if e.rate is not None else ""
    if e.seq_len and e.horizon >= e.seq_len:  # extrapolated past what was measured: say what was seen
        head = (
            f"the gradient reaches all {e.seq_len} steps of the sequences seen in {track.name}{per_step}; "
            f"extrapolated horizon {e.horizon:.0f} steps {'<' if e.need and e.horizon < e.need else 'vs'} "
            f"{f'the {e.need} steps the task needs' if e.need else 'no declared need'}"
        )
    else:
        head = f"gradient horizon {e.horizon:.0f} steps {e.compared()} in {track.name}{per_step}"
    evidence = e.numbers_for(rate=e.rate, decay_per_step=math.exp(e.rate) if e.rate is not None else None)
    return context.finding(
        "GP101",
        e.message(head),
        layer=track.name,
        step=track.latest.step,
        severity=e.severity,
        evidence=evidence,
        fixes=_fixes(context, e) if e.hurts else (),
        first_step=e.first_step(),
    )


def _fixes(context: RuleContext, e: VanishingEvidence) -> tuple[FixAction, ...]:
    fixes = vanishing_fixes(e.track.mode, e.judged_length)
    layers = context.layer_info(e.track.module).get("num_layers")
    top = f".l{int(layers) - 1}" if isinstance(layers, int) else None
    if isinstance(layers, int) and layers > 1 and top is not None and not e.track.layer_key.endswith(top):
        fixes += (action("residual-stack"),)
    return fixes


def vanishing_fixes(mode: str | None, length: int) -> tuple[FixAction, ...]:
    """The remedies for a vanishing gradient in a layer of this cell type (never a shorter truncation)."""
    if mode == "LSTM":
        return (action("chrono-init", max_timescale=max(int(length), 3)), action("orthogonal-recurrent"))
    if mode == "GRU":
        return (action("orthogonal-recurrent"),)
    if is_relu(mode):
        return (action("identity-recurrent"), action("use-gated-cell"))
    return (action("orthogonal-recurrent"), action("use-gated-cell"))
