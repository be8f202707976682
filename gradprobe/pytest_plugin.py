"""The pytest plugin (entry point ``pytest11``): a ``gradprobe`` fixture, a marker, a session report.

Example::

    @pytest.mark.gradprobe(thresholds={"GP101": {"min_horizon_fraction": 0.5}}, ignore=["GP402"])
    def test_encoder_keeps_gradients(gradprobe):
        gradprobe.assert_healthy(model, batch, horizon=50)

Options (group "gradprobe"): ``--gradprobe-report=FILE`` writes every checked
test's findings as JSON; ``--gradprobe-fail-on=SEVERITY`` sets the default
failing severity (ini: ``gradprobe_report``, ``gradprobe_fail_on``).
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from gradprobe import testing
from gradprobe.events import _clean

REPORT_HELP = "write the gradprobe findings of every checked test to this JSON file"
FAIL_ON_HELP = "lowest severity that fails gradprobe.assert_healthy (info, warning, error); default warning"
MARKER = (
    "gradprobe(thresholds=None, ignore=(), fail_on=None, dependency_length=None): gradient-health settings for "
    "this test: per-rule thresholds such as {'GP101': {'min_horizon_fraction': 0.5}}, rule codes to ignore, the "
    "failing severity, the dependency length (steps) the task needs"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradprobe", "gradient health of recurrent models")
    group.addoption("--gradprobe-report", metavar="FILE", default=None, help=REPORT_HELP)
    group.addoption("--gradprobe-fail-on", choices=("info", "warning", "error"), default=None, help=FAIL_ON_HELP)
    parser.addini("gradprobe_report", REPORT_HELP, default=None)
    parser.addini("gradprobe_fail_on", FAIL_ON_HELP, default="warning")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    config.stash[_RECORDS] = []


_RECORDS = pytest.StashKey[list]()


def _fail_on(config: pytest.Config) -> str:
    value = config.getoption("--gradprobe-fail-on") or config.getini("gradprobe_fail_on") or "warning"
    if value not in ("info", "warning", "error"):
        raise pytest.UsageError(f"gradprobe_fail_on must be info, warning or error, got {value!r}")
    return value


def _settings(item: pytest.Item) -> testing.HealthSettings:
    settings = testing.HealthSettings(fail_on=_fail_on(item.config))
    for marker in reversed(list(item.iter_markers("gradprobe"))):  # closest marker wins
        if marker.args:
            raise pytest.UsageError(f"{item.nodeid}: use keyword arguments with @pytest.mark.gradprobe")
        unknown = set(marker.kwargs) - {"thresholds", "ignore", "fail_on", "dependency_length"}
        if unknown:
            raise pytest.UsageError(f"{item.nodeid}: unknown gradprobe marker argument(s): {', '.join(sorted(unknown))}")
        for code, values in (marker.kwargs.get("thresholds") or {}).items():
            settings.thresholds.setdefault(code, {}).update(values)
        settings.ignore = tuple(settings.ignore) + tuple(marker.kwargs.get("ignore", ()))
        settings.fail_on = marker.kwargs.get("fail_on") or settings.fail_on
        if marker.kwargs.get("dependency_length") is not None:
            settings.dependency_length = int(marker.kwargs["dependency_length"])
    return settings


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    records = item.config.stash[_RECORDS]
    testing.current_settings = _settings(item)
    testing.collector = lambda report: records.append((item.nodeid, report))
    try:
        return (yield)
    finally:
        testing.current_settings = None
        testing.collector = None


class GradprobeFixture:
    """What the ``gradprobe`` fixture gives a test: the checks, with the test's marker settings."""

    def __init__(self) -> None:
        self._probes: list[Any] = []

    def assert_healthy(self, model: Any, inputs: Any, loss_fn: Any = None, allow: Any = (), horizon: int | None = None, **kwargs: Any) -> Any:
        """See :func:`gradprobe.testing.assert_healthy`."""
        return testing.assert_healthy(model, inputs, loss_fn, allow, horizon, **kwargs)

    def check(self, model: Any, inputs: Any, loss_fn: Any = None, **kwargs: Any) -> Any:
        """:func:`gradprobe.check` with the marker's thresholds and suppressions."""
        import gradprobe

        settings = testing.current_settings or testing.HealthSettings()
        kwargs.setdefault("thresholds", settings.thresholds)
        kwargs.setdefault("ignore", settings.ignore)
        report = gradprobe.check(model, inputs, loss_fn, **kwargs)
        if testing.collector is not None:
            testing.collector(report)
        return report

    def lint(self, model: Any, **kwargs: Any) -> Any:
        """:func:`gradprobe.lint` with the marker's thresholds and suppressions."""
        import gradprobe

        settings = testing.current_settings or testing.HealthSettings()
        kwargs.setdefault("thresholds", settings.thresholds)
        kwargs.setdefault("ignore", settings.ignore)
        return gradprobe.lint(model, **kwargs)

    def attach(self, model: Any, **kwargs: Any) -> Any:
        """:func:`gradprobe.attach`, closed automatically when the test ends."""
        import gradprobe

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
    path.write_text(json.dumps(_clean(data), indent=2, default=str) + "\n", encoding="utf-8")


def pytest_report_header(config: pytest.Config) -> str | None:
    target = config.getoption("--gradprobe-report") or config.getini("gradprobe_report")
    return f"gradprobe: findings report -> {target}" if target else None
