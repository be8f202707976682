"""The pytest plugin, driven with pytester: passing and failing cases, messages, marker, options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MODELS = '''
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
'''


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
            gradprobe.assert_healthy(*vanishing(), horizon=2000)
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


def test_ini_settings_and_bad_marker(project):
    project.makeini("[pytest]\naddopts = -p no:cacheprovider\ngradprobe_fail_on = error\ngradprobe_report = r.json\n")
    project.makepyfile(
        test_ini="""
        import pytest
        from models import vanishing

        def test_error_still_fails(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150)

        @pytest.mark.gradprobe(colour="red")
        def test_bad_marker(gradprobe):
            gradprobe.assert_healthy(*vanishing(), dependency_length=150)
        """
    )
    result = project.runpytest()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*unknown gradprobe marker argument(s): colour*"])
    assert (Path(project.path) / "r.json").exists()


def test_marker_is_registered_with_its_signature(project):
    result = project.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.gradprobe(thresholds=None, ignore=(), fail_on=None, dependency_length=None): *"])
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
