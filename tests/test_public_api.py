"""The package's public names: all importable, and importing gradprobe alone does not import torch."""

from __future__ import annotations

import subprocess
import sys

import gradprobe


def test_every_public_name_resolves():
    assert set(gradprobe.__all__) == {*gradprobe._PUBLIC, "__version__"}
    for name in gradprobe.__all__:
        assert getattr(gradprobe, name) is not None
    assert gradprobe.GradprobeWarning is __import__("gradprobe.probe").probe.GradprobeWarning


def test_import_gradprobe_does_not_import_torch():
    code = "import sys, gradprobe, gradprobe.pytest_plugin; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "False"


def test_assert_healthy_is_reachable_at_the_top_level():
    """The README's script form: ``gradprobe.assert_healthy`` (the pytest fixture of the same name does the same)."""
    import pytest
    import torch
    from torch import nn

    from gradprobe.testing import assert_healthy

    assert gradprobe.assert_healthy is assert_healthy
    torch.manual_seed(0)
    rnn = nn.RNN(4, 16)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.02)  # no memory: the gradient vanishes within a step or two
    with pytest.raises(AssertionError, match="GP101"):
        gradprobe.assert_healthy(rnn, torch.randn(40, 2, 4), dependency_length=30)


def test_a_finding_printed_ends_with_its_fix():
    from gradprobe.actions import action
    from gradprobe.findings import Finding

    finding = Finding(
        "GP201", "recurrent-spectrum", "warning", "rnn.l0", None, "sigma too large", {}, "orthogonal recurrent weights",
        (action("orthogonal-recurrent"),),
    )  # fmt: skip
    lines = str(finding).splitlines()
    assert lines[0] == "GP201 recurrent-spectrum [warning] rnn.l0: sigma too large"
    assert lines[1] == "    fix: orthogonal recurrent weights"
    assert str(finding._replace(fix=None)) == lines[0]
