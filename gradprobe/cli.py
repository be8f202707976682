"""The ``gradprobe`` command line.

Exit codes: 0 healthy, 1 findings at or above ``--fail-on``, 2 bad input
(unreadable or foreign log, bad configuration, a factory that does not build a
recurrent model), 3 an internal error of gradprobe. Errors are one line on
stderr, never a traceback (``--debug`` shows it for internal errors).
Warnings (a skipped plugin, a malformed log line) are one line each.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gradprobe.printable import strip_control
from gradprobe.version import __version__

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FINDINGS, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


class Main(click.Group):
    """The command group: one-line warnings, and exit 3 with one line for any internal error."""

    def invoke(self, ctx: click.Context) -> Any:
        import warnings

        def one_line(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            click.echo(f"gradprobe: warning: {strip_control(str(message))}", err=True)

        from gradprobe.plugins import DISABLE_ENV

        disabled = os.environ.get(DISABLE_ENV)
        try:
            with warnings.catch_warnings():  # one-line warnings for this command only
                warnings.showwarning = one_line
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # the reader went away (`gradprobe plugins | head`): stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_OK)
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            from gradprobe.faults import short

            click.echo(
                f"gradprobe: internal error: {strip_control(short(exc))} (run with --debug for the traceback)", err=True
            )
            ctx.exit(EXIT_INTERNAL)
        finally:  # --disable-plugin holds for this command only
            if disabled is None:
                os.environ.pop(DISABLE_ENV, None)
            else:
                os.environ[DISABLE_ENV] = disabled


class BadInput(click.ClickException):
    """Shown as ``gradprobe: error: ...``, exit code 2."""

    exit_code = EXIT_BAD_INPUT

    def show(self, file: Any = None) -> None:
        click.echo(f"gradprobe: error: {self.format_message()}", err=True)


def _bad_input_errors(fn: F) -> F:
    """Turn the expected failures of reading user input into one-line errors (exit 2)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from gradprobe.config import ConfigError
        from gradprobe.errors import NotRecurrentError
        from gradprobe.events import LogFormatError

        try:
            return fn(*args, **kwargs)
        except (LogFormatError, ConfigError, NotRecurrentError) as exc:
            raise BadInput(str(exc)) from None
        except OSError as exc:
            raise BadInput(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None

    return wrapper  # type: ignore[return-value]


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gradprobe")
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error.")
@click.option(
    "--disable-plugin",
    "disable",
    multiple=True,
    metavar="NAME",
    help="Leave out a plugin (entry-point or module name); repeatable. Same as GRADPROBE_DISABLE_PLUGINS.",
)
def main(debug: bool, disable: tuple[str, ...]) -> None:
    """Gradient-health diagnostics for recurrent networks (RNN, LSTM, GRU)."""
    if disable:
        from gradprobe.plugins import DISABLE_ENV

        names = [n for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()] + list(disable)
        os.environ[DISABLE_ENV] = ",".join(names)


@main.command()
def plugins() -> None:
    """List the plugins: name, source, status and the hooks each implements."""
    import warnings

    from gradprobe.plugins import make_plugin_manager
    from gradprobe.rules.registry import Registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are listed below, with their reasons
        pm = make_plugin_manager()
        Registry.from_plugins(pm)
    statuses = list(pm.statuses.values())
    # columns as wide as their longest entry (a long module name never runs into its source)
    name_width = max([len("name"), *(len(strip_control(s.name)) for s in statuses)]) + 2
    source_width = max([len("source"), *(len(strip_control(s.source)) for s in statuses)]) + 2
    click.echo(f"{'name':<{name_width}}{'source':<{source_width}}{'status':<10}hooks / reason")
    for status in statuses:
        detail = (
            status.reason
            if status.status != "active"
            else ", ".join(h.removeprefix("gradprobe_") for h in status.hooks)
        )
        name, source = strip_control(status.name), strip_control(status.source)
        click.echo(strip_control(f"{name:<{name_width}}{source:<{source_width}}{status.status:<10}{detail}"))


@main.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.option(
    "--fail-on",
    type=click.Choice(["info", "warning", "error"]),
    default=None,
    help="Exit 1 when a finding is at least this severe [default: the run's fail-on, else warning].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Judge with this pyproject.toml's [tool.gradprobe] instead of the configuration the run recorded.",
)
@click.option(
    "--compare",
    "compare",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Another run (its log, or one per rank) to overlay, e.g. the run before a fix. Repeat for its rank logs.",
)
@_bad_input_errors
def report(
    logs: tuple[Path, ...],
    fmt: str,
    output: Path | None,
    fail_on: str | None,
    config_path: Path | None,
    compare: tuple[Path, ...],
) -> None:
    """Judge run logs and report findings, gradient profiles and training figures.

    Give several LOGS (one per rank) to merge a distributed run; a LOG that does not
    exist stands for its rank files (run.log -> run.rank0.log, run.rank1.log, ...).
    --compare OTHER.log overlays a second run, kept apart from the first: the exit
    code is the first run's.
    """
    from gradprobe.config import load_pyproject
    from gradprobe.distributed import expand_rank_logs
    from gradprobe.report import summarize_logs
    from gradprobe.report.html_report import render_html
    from gradprobe.report.json_report import render_json
    from gradprobe.report.text import render_text

    # stdout carries the report alone: what a plugin prints while the logs are judged goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        config = load_pyproject(config_path.parent) if config_path is not None else None
        charts = fmt == "html"  # only the HTML report plots series over training
        if sys.stderr.isatty():
            total = sum(p.stat().st_size for path in logs for p in expand_rank_logs(path) if p.is_file())
            with click.progressbar(length=total, label="reading logs", file=sys.stderr, show_pos=False) as bar:
                summary = summarize_logs(logs, config, progress=bar.update, charts=charts)
        else:
            summary = summarize_logs(logs, config, charts=charts)
        fail_on = fail_on or summary.fail_on
        other = summarize_logs(compare, config, charts=charts) if compare else None
        names = (_run_name(logs), _run_name(compare)) if compare else ("run", "other")
        if fmt == "html":
            text = render_html(summary, fail_on, other, names)
        elif fmt == "json":
            text = render_json(summary, fail_on, other)
        else:
            text = render_text(summary, fail_on, other, names)
    if fmt == "text":
        text = strip_control(text)
    text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate from a log cannot be written
    if output is not None:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)
    for path, problem in summary.problems[:5]:
        click.echo(strip_control(f"gradprobe: warning: {path}: {problem} (skipped)"), err=True)
    sys.exit(EXIT_FINDINGS if summary.fails(fail_on) else EXIT_OK)


def _run_name(logs: tuple[Path, ...]) -> str:
    return ", ".join(path.name for path in logs)


def _load_factory(spec: str) -> Callable[[], Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BadInput(f"expected MODULE:FACTORY, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is bad input here
        raise BadInput(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise BadInput(f"{module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise BadInput(f"{spec} is not callable")
    factory: Callable[[], Any] = target
    return factory


@main.command()
@click.argument("factory")
@click.option("--fail-on", type=click.Choice(["info", "warning", "error"]), default=None)
@_bad_input_errors
def lint(factory: str, fail_on: str | None) -> None:
    """Static checks of the model built by FACTORY (MODULE:FUNCTION or MODULE:CLASS)."""
    import gradprobe
    from gradprobe.config import load_pyproject
    from gradprobe.findings import failing

    make = _load_factory(factory)
    try:
        model = make()
    except Exception as exc:  # noqa: BLE001 - a failing factory is bad input
        raise BadInput(f"{factory}() failed: {type(exc).__name__}: {exc}") from None
    config = load_pyproject()
    findings = gradprobe.lint(model, config)
    for finding in findings:
        click.echo(str(finding))
        if finding.fix:
            click.echo(f"    fix: {finding.fix}")
    click.echo(f"{len(findings)} finding(s) in {type(model).__name__}")
    sys.exit(EXIT_FINDINGS if failing(findings, fail_on or config.fail_on) else EXIT_OK)


@main.command()
@click.argument("code", required=False)
def rules(code: str | None) -> None:
    """List the rule codes, or show one rule's documentation."""
    from gradprobe.config import Config
    from gradprobe.rules.engine import RuleEngine

    registry = RuleEngine(Config()).registry
    if code:
        if code.upper() not in registry:
            raise BadInput(f"unknown rule code {code!r}; run 'gradprobe rules' for the list")
        click.echo(registry[code.upper()].doc())
        return
    click.echo(f"{'code':<7}{'name':<34}{'severity':<15}{'kind':<9}summary")
    for rule in registry.sorted():
        kind = "static" if rule.static else "measured"
        click.echo(f"{rule.code:<7}{rule.name:<34}{rule.severities:<15}{kind:<9}{rule.summary}")


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder for run.log and fixed.log.",
)
@click.option("--steps", type=int, default=600, show_default=True)
@click.option("--seq-len", type=int, default=100, show_default=True)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="torch threads (default: 1, fastest for a model this small, unless OMP_NUM_THREADS is set).",
)
def demo(out: Path, steps: int, seq_len: int, threads: int | None) -> None:
    """Train a small LSTM with a vanishing gradient, report it, fix it, train again (~10 s)."""
    import os

    import torch

    from gradprobe.demo import TrainingSetup, run_demo

    if threads is not None:
        torch.set_num_threads(max(1, threads))
    elif not os.environ.get("OMP_NUM_THREADS"):
        # a small model runs fastest on one thread; torch's default (every core) on a busy machine
        # can make the same 10 s demo take minutes
        torch.set_num_threads(1)
    run_demo(out, TrainingSetup(steps=steps, seq_len=seq_len), echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    main()
