"""`gradprobe report` (and the other commands that read logs or list rules) never import torch: 2.3 s and
290 MB of start-up before reading a 20-step log, for a program that only reads JSON."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, sys
from click.testing import CliRunner
from gradprobe.cli import main

answers = [CliRunner().invoke(main, args).exit_code for args in json.loads(sys.argv[1])]
print(json.dumps({"torch": "torch" in sys.modules, "answers": answers}))
"""


def test_reading_a_log_imports_no_torch(vanishing_log, tmp_path):
    run_log = vanishing_log
    commands = [
        ["report", str(run_log)],
        ["report", str(run_log), "--format", "json"],
        ["report", str(run_log), "--format", "html", "-o", str(tmp_path / "r.html")],
        ["report", str(run_log), "--compare", str(run_log)],
        ["report", str(tmp_path / "missing.log")],
        ["rules"],
        ["rules", "GP201"],
        ["plugins"],
    ]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(commands)], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answers"] == [1, 1, 1, 1, 2, 0, 0, 0]  # read and judged (findings: 1); a missing log: 2
    assert result["torch"] is False
