"""The pytest plugin, driven with pytester: passing and failing cases, messages, marker, options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MODELS = """
import pytest
import torch
from torch import nn
from gradprobe.fixes import reinit

def healthy():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 16)
    reinit.orthogonal_recurrent_(lstm)
    reinit.forget_bias_(lstm, 1.0)
    return lstm, torch.randn(12, 8, 4)

def vanishing():
    torch.manual_seed(0)
    return nn.RNN(1, 32), torch.randn(150, 8, 1)
"""


@pytest.fixture
def project(pytester):
    pytester.makepyfile(models=MODELS)
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    return pytester


def test_healthy_model_passes_and_vanishing_one_fails_with_findings(project):
    project.makepyfile(
        test_health="""
        from models import healthy, vanishing

        def test_healthy(gradprobe):
            report = gradprobe.assert_healthy(*healthy())
            assert report.healthy

        def test_vanishing(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150)
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*GradientHealthError: gradient health check failed: * finding(s) at or above warning*",
            "*GP101 vanishing-gradient [[]error[]] in RNN.l0: gradient horizon * steps < the 150 steps the task needs in RNN.l0*",
            "*evidence: horizon=*, seq_len=150, dependency_length=150, rate=*",
            "*fix: orthogonal recurrent weights*",
            "*measured horizons (steps): RNN.l0 *",
        ]
    )


def test_marker_thresholds_ignore_and_fail_on(project):
    project.makepyfile(
        test_marker="""
        import pytest
        from models import vanishing

        @pytest.mark.gradprobe(thresholds={"GP101": {"min_horizon_fraction": 0.01, "error_horizon_fraction": 0.0}})
        def test_relaxed(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150)

        @pytest.mark.gradprobe(ignore=["GP101"])
        def test_ignored(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150)

        def test_allowed_by_argument(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150, allow=["GP101"])

        @pytest.mark.gradprobe(fail_on="error")
        def test_info_does_not_fail(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150, allow=["GP101"])

        @pytest.mark.gradprobe(thresholds={"GP101": {"min_horizon_fraction": 0.01, "error_horizon_fraction": 0.0}})
        def test_required_horizon_overrides(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=2000)
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*test_required_horizon_overrides*", "*< the 2000 steps the task needs*"])


def test_helper_works_without_the_fixture(project):
    project.makepyfile(
        test_direct="""
        import pytest
        from gradprobe.testing import assert_healthy, GradientHealthError
        from models import vanishing

        @pytest.mark.gradprobe(ignore=["GP101"])
        def test_marker_applies_to_direct_calls():
            assert_healthy(*vanishing(), dependency_length=150)

        def test_raises():
            with pytest.raises(GradientHealthError) as info:
                assert_healthy(*vanishing(), dependency_length=150)
            assert info.value.findings[0].code == "GP101"
        """
    )
    project.runpytest().assert_outcomes(passed=2)


def test_session_report_file(project):
    project.makepyfile(
        test_report="""
        from models import healthy, vanishing

        def test_a(gradprobe):
            gradprobe.check(*vanishing(), dependency_length=150)

        def test_b(gradprobe):
            gradprobe.assert_healthy(*healthy())

        def test_c():
            pass
        """
    )
    result = project.runpytest("--gradprobe-report", "out/findings.json")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["gradprobe: findings report -> out/findings.json"])
    data = json.loads((Path(project.path) / "out" / "findings.json").read_text())
    assert data["schema"] == "gradprobe-pytest/1"
    assert [t["nodeid"] for t in data["tests"]] == ["test_report.py::test_a", "test_report.py::test_b"]
    assert data["tests"][0]["healthy"] is False and data["tests"][0]["findings"][0]["code"] == "GP101"
    assert data["tests"][1]["healthy"] is True


def test_ini_fail_on_and_report(project):
    project.makeini("[pytest]\naddopts = -p no:cacheprovider\ngradprobe_fail_on = error\ngradprobe_report = r.json\n")
    project.makepyfile(
        test_ini="""
        from models import vanishing

        def test_error_still_fails(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150)

        def test_warning_passes_under_fail_on_error(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150,
                                     thresholds={"GP101": {"error_horizon_fraction": 0.0}})
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    assert (Path(project.path) / "r.json").exists()


def test_pyproject_fail_on_is_the_plugins_default_and_the_reports(project):
    project.makepyprojecttoml('[tool.gradprobe]\nfail-on = "error"\n')
    project.makepyfile(
        test_project="""
        from models import vanishing

        def test_warning_passes(gradprobe):
            report = gradprobe.assert_healthy(*vanishing(), dependency_length=150,
                                              thresholds={"GP101": {"error_horizon_fraction": 0.0}})
            assert report.fail_on == "error" and report.healthy  # Report.healthy means the same
            assert [f.severity for f in report.findings if f.code == "GP101"] == ["warning"]

        def test_error_fails(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150)
        """
    )
    project.runpytest().assert_outcomes(passed=1, failed=1)
    project.runpytest("--gradprobe-fail-on", "warning").assert_outcomes(failed=2)  # the option overrides


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ('colour="red"', "unknown argument(s) colour"),
        ('"GP101"', "use keyword arguments"),
        ('fail_on="fatal"', "fail_on must be info, warning or error, got 'fatal'"),
        ("dependency_length=0", "dependency_length must be a positive number of steps"),
        ('thresholds={"GP101": 0.5}', "thresholds must map rule codes to {name: number}"),
        ('ignore="GP101"', "ignore must be a list of rule codes"),
    ],
)
def test_an_invalid_marker_stops_the_session_once_at_start_up(project, marker, expected):
    project.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.gradprobe({marker})
        def test_one(gradprobe):
            pass

        @pytest.mark.gradprobe({marker})
        def test_two(gradprobe):
            pass
        """
    )
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.stderr.lines if "invalid @pytest.mark.gradprobe" in line]
    assert len(lines) == 1 and expected in lines[0] and "test_one" in lines[0] and "test_two" in lines[0]
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("ini", "gradprobe_fail_on must be info, warning or error, got 'fatal'"),
        ("pyproject", "fail-on must be info, warning or error"),
    ],
)
def test_an_invalid_fail_on_stops_the_session_once_at_start_up(project, setup, expected):
    if setup == "ini":
        project.makeini("[pytest]\naddopts = -p no:cacheprovider\ngradprobe_fail_on = fatal\n")
    else:
        project.makepyprojecttoml('[tool.gradprobe]\nfail-on = "fatal"\n')
    project.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.str().count(expected) == 1 and "Traceback" not in result.stderr.str()


def test_the_failure_points_at_the_test_not_at_gradprobe(project):
    project.makepyfile(
        test_tb="""
        from models import vanishing

        def test_vanishing(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150)
        """
    )
    result = project.runpytest("--tb=long")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "test_tb.py:4: GradientHealthError" in text  # the last frame shown is the test's own line
    assert "gradprobe/testing.py" not in text and "gradprobe/pytest_plugin.py" not in text


def test_the_plugin_does_not_import_torch_until_a_test_uses_gradprobe(pytester):
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_a():
            assert "torch" not in sys.modules

        def test_b(gradprobe):  # the fixture alone does not need torch
            assert "torch" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "gradprobe", "--gradprobe-fail-on", "error")
    result.assert_outcomes(passed=2)


def test_marker_is_registered_with_its_signature(project):
    result = project.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            (
                "@pytest.mark.gradprobe(config=None, thresholds=None, ignore=(), fail_on=None, cells=(), "
                "dependency_length=None, truncation=None, grad_clip=None, signals=None): *"
            )
        ]
    )
    project.makepyfile(test_strict="import pytest\n@pytest.mark.gradprobe(ignore=['GP101'])\ndef test_x():\n    pass\n")
    project.runpytest("--strict-markers").assert_outcomes(passed=1)


def test_attach_through_the_fixture_is_closed_at_teardown(project):
    project.makepyfile(
        test_attach="""
        import torch
        from torch import nn

        PROBES = []

        def test_uses_probe(gradprobe):
            model = nn.GRU(2, 3)
            probe = gradprobe.attach(model, every=1, config={})
            model(torch.randn(4, 1, 2))[0].sum().backward()
            probe.step()
            PROBES.append((probe, model))

        def test_closed_after():
            probe, model = PROBES[0]
            assert probe.closed and not model._forward_hooks
        """
    )
    project.runpytest("-p", "no:randomly").assert_outcomes(passed=2)
