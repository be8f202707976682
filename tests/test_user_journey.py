"""The whole user journey: probe a training loop, read the report, apply the fixes, train again, assert health."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

import gradprobe
from gradprobe.cli import main
from gradprobe.demo import Adder, TrainingSetup, train
from gradprobe.findings import Finding
from gradprobe.testing import assert_healthy


def test_probe_report_fix_retrain_assert(tmp_path):
    setup = TrainingSetup(steps=60, seq_len=80, batch=32)
    torch.manual_seed(0)
    model = Adder(hidden=32)

    # 1. wrap the training loop
    log = tmp_path / "run.log"
    with gradprobe.attach(model, log=log, every=20, dependency_length=setup.seq_len) as probe:  # the sum needs step 0
        train(model, setup, probe)
    assert probe.error is None

    # 2. the report flags the vanishing gradient and fails the build
    runner = CliRunner()
    text = runner.invoke(main, ["report", str(log)])
    assert text.exit_code == 1 and "GP101 vanishing-gradient" in text.output
    as_json = runner.invoke(main, ["report", str(log), "--format", "json"])
    findings = [Finding.from_dict(f) for f in json.loads(as_json.stdout)["findings"]]
    assert any(f.code == "GP101" and f.layer == "rnn.l0" for f in findings)

    # 3. apply the fixes the findings call for, from the report alone
    torch.manual_seed(0)
    fresh = Adder(hidden=32)
    applied = gradprobe.fixes.apply(fresh, findings)
    assert [a.action.split(" (")[0] for a in applied] == [
        "chrono init of forget/input biases",
        "orthogonal recurrent weights",
    ]

    # 4. train again: the report now passes
    fixed_log = tmp_path / "fixed.log"
    with gradprobe.attach(fresh, log=fixed_log, every=20, dependency_length=setup.seq_len) as probe:
        train(fresh, setup, probe)
    result = runner.invoke(main, ["report", str(fixed_log)])
    assert result.exit_code == 0, result.output
    horizons = {name: layer.horizon for name, layer in probe.layers.items()}
    assert horizons["rnn.l0"] is None or horizons["rnn.l0"] >= setup.seq_len

    # 5. and a test suite can hold the model to it
    x = torch.rand(setup.seq_len, 8, 2)
    report = assert_healthy(fresh, x, loss_fn=lambda out: out.sum(), dependency_length=setup.seq_len, allow=["GP402"])
    assert report.healthy
