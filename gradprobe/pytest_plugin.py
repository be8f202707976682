"""The pytest plugin (entry point ``pytest11``): a ``gradprobe`` fixture, a marker, a session report.

Example::

    @pytest.mark.gradprobe(thresholds={"GP101": {"min_horizon_fraction": 0.5}}, ignore=["GP402"])
    def test_encoder_keeps_gradients(gradprobe):
        gradprobe.assert_healthy(model, batch, horizon=50)

Options (group "gradprobe"): ``--gradprobe-report=FILE`` writes every checked
test's findings as JSON; ``--gradprobe-fail-on=SEVERITY`` sets the default
failing severity (ini: ``gradprobe_report``, ``gradprobe_fail_on``; without
either, ``fail-on`` of ``[tool.gradprobe]``, else ``warning``). An invalid
option or marker stops the session at start-up with one line.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from gradprobe import health
from gradprobe.config import ConfigError, Options, load_pyproject
from gradprobe.events import json_safe
from gradprobe.findings import SEVERITIES

# Nothing here imports torch: a suite that never uses gradprobe pays only for this module.

REPORT_HELP = "write the gradprobe findings of every checked test to this JSON file"
FAIL_ON_HELP = (
    "lowest severity that fails gradprobe.assert_healthy (info, warning, error); "
    "default: fail-on of [tool.gradprobe], else warning"
)
#: The marker takes the rule keywords and declared needs of :class:`gradprobe.config.Options`, as every entry point.
MARKER_ARGUMENTS = tuple(f.name for f in fields(Options))
MARKER = (
    f"gradprobe({', '.join(f'{f.name}={f.default!r}' for f in fields(Options))}): gradient-health settings for this "
    "test (gradprobe.config.Options): per-rule thresholds such as {'GP101': {'min_horizon_fraction': 0.5}}, rule "
    "codes to ignore, the failing severity, custom cells, the dependency length (steps) the task needs, the loop's "
    "truncation window and clipping norm"
)

_RECORDS = pytest.StashKey[list[Any]]()
_FAIL_ON = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradprobe", "gradient health of recurrent models")
    group.addoption("--gradprobe-report", metavar="FILE", default=None, help=REPORT_HELP)
    group.addoption("--gradprobe-fail-on", choices=SEVERITIES, default=None, help=FAIL_ON_HELP)
    parser.addini("gradprobe_report", REPORT_HELP, default=None)
    parser.addini("gradprobe_fail_on", FAIL_ON_HELP, default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    config.stash[_RECORDS] = []
    config.stash[_FAIL_ON] = _session_fail_on(config)


def _session_fail_on(config: pytest.Config) -> str:
    """``--gradprobe-fail-on``, else ini ``gradprobe_fail_on``, else ``fail-on`` of the project's pyproject.toml.

    Raises:
        pytest.UsageError: once, at start-up, for a bad value or a bad ``[tool.gradprobe]`` table.
    """
    option = config.getoption("--gradprobe-fail-on")
    ini = config.getini("gradprobe_fail_on")
    if ini and ini not in SEVERITIES:
        raise pytest.UsageError(f"gradprobe: gradprobe_fail_on must be info, warning or error, got {ini!r}")
    try:
        project = load_pyproject(config.rootpath)
    except ConfigError as exc:
        raise pytest.UsageError(f"gradprobe: {exc}") from None
    return str(option or ini or project.fail_on)


def marker_problem(kwargs: Mapping[str, Any], args: tuple[Any, ...] = ()) -> str | None:
    """Why a ``@pytest.mark.gradprobe(...)`` is invalid, or ``None``."""
    if args:
        return "use keyword arguments"
    unknown = sorted(set(kwargs) - set(MARKER_ARGUMENTS))
    if unknown:
        return f"unknown argument(s) {', '.join(unknown)} (known: {', '.join(MARKER_ARGUMENTS)})"
    thresholds = kwargs.get("thresholds") or {}
    if not isinstance(thresholds, Mapping) or not all(
        isinstance(values, Mapping)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values())
        for values in thresholds.values()
    ):
        return "thresholds must map rule codes to {name: number}"
    ignore = kwargs.get("ignore", ())
    if isinstance(ignore, str) or not all(isinstance(code, str) for code in ignore):
        return "ignore must be a list of rule codes"
    if kwargs.get("fail_on") is not None and kwargs["fail_on"] not in SEVERITIES:
        return f"fail_on must be info, warning or error, got {kwargs['fail_on']!r}"
    for name in ("dependency_length", "truncation"):
        need = kwargs.get(name)
        if need is not None and (isinstance(need, bool) or not isinstance(need, int) or need < 1):
            return f"{name} must be a positive number of steps, got {need!r}"
    signals = kwargs.get("signals") or {}
    if not isinstance(signals, Mapping) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in signals.values()
    ):
        return "signals must map signal names to numbers"
    clip = kwargs.get("grad_clip")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
        return f"grad_clip must be a positive norm, got {clip!r}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = [
        f"{item.nodeid}: {problem}"
        for item in items
        for marker in item.iter_markers("gradprobe")
        if (problem := marker_problem(marker.kwargs, marker.args)) is not None
    ]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise pytest.UsageError(f"gradprobe: invalid @pytest.mark.gradprobe: {shown}")


def marker_options(item: pytest.Item) -> Options:
    """The test's markers merged (thresholds and suppressions add up, the closest marker wins the rest) over
    the session's failing severity."""
    options = Options(fail_on=item.config.stash.get(_FAIL_ON, None))
    for marker in reversed(list(item.iter_markers("gradprobe"))):  # closest marker wins
        thresholds = {code: dict(values) for code, values in (options.thresholds or {}).items()}
        for code, values in (marker.kwargs.get("thresholds") or {}).items():
            thresholds.setdefault(code, {}).update(values)
        given = {k: v for k, v in marker.kwargs.items() if k not in ("thresholds", "ignore")}
        options = Options.of(
            options, thresholds=thresholds, ignore=(*options.ignore, *marker.kwargs.get("ignore", ())), **given
        )
    return options


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    records = item.config.stash[_RECORDS]
    test = health.TestHealth(marker_options(item), lambda report: records.append((item.nodeid, report)))
    with health.running(test):
        return (yield)


class GradprobeFixture:
    """What the ``gradprobe`` fixture gives a test: the checks, with the test's marker settings."""

    def __init__(self) -> None:
        self._probes: list[Any] = []

    def assert_healthy(
        self, model: Any, inputs: Any, loss_fn: Any = None, allow: Any = (), horizon: int | None = None, **kwargs: Any
    ) -> Any:
        """See :func:`gradprobe.testing.assert_healthy`."""
        __tracebackhide__ = True
        from gradprobe import testing

        return testing.assert_healthy(model, inputs, loss_fn, allow, horizon, **kwargs)

    def check(self, model: Any, inputs: Any, loss_fn: Any = None, **kwargs: Any) -> Any:
        """:func:`gradprobe.check` with the marker's options under the call's keywords."""
        import gradprobe

        test = health.current()
        kwargs.setdefault("options", test.options)
        report = gradprobe.check(model, inputs, loss_fn, **kwargs)
        if test.collect is not None:
            test.collect(report)
        return report

    def lint(self, model: Any, **kwargs: Any) -> Any:
        """:func:`gradprobe.lint` with the marker's options under the call's keywords."""
        import gradprobe

        kwargs.setdefault("options", health.current().options)
        return gradprobe.lint(model, **kwargs)

    def attach(self, model: Any, **kwargs: Any) -> Any:
        """:func:`gradprobe.attach` with the marker's options under the call's keywords, closed automatically
        when the test ends."""
        import gradprobe

        kwargs.setdefault("options", health.current().options)
        probe = gradprobe.attach(model, **kwargs)
        self._probes.append(probe)
        return probe

    def close(self) -> None:
        for probe in self._probes:
            probe.close()
        self._probes = []


@pytest.fixture(name="gradprobe")
def gradprobe_fixture() -> Generator[GradprobeFixture, None, None]:
    """Gradient-health checks that honour ``@pytest.mark.gradprobe`` and feed ``--gradprobe-report``."""
    helper = GradprobeFixture()
    yield helper
    helper.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    target = config.getoption("--gradprobe-report") or config.getini("gradprobe_report")
    if not target:
        return
    records = config.stash.get(_RECORDS, [])
    data = {
        "schema": "gradprobe-pytest/1",
        "tests": [
            {
                "nodeid": nodeid,
                "healthy": report.healthy,
                "findings": [f.to_dict() for f in report.findings],
                "horizons": {name: layer.horizon for name, layer in report.layers.items()},
            }
            for nodeid, report in records
        ],
    }
    path = Path(target)
    if not path.is_absolute():
        path = Path(config.rootpath) / path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(data), indent=2, default=str) + "\n", encoding="utf-8")


def pytest_report_header(config: pytest.Config) -> str | None:
    target = config.getoption("--gradprobe-report") or config.getini("gradprobe_report")
    return f"gradprobe: findings report -> {target}" if target else None
