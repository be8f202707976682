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
