"""End-to-end: the broken LSTM is flagged, and gradprobe's fixes make it learn (full default budget)."""

from gradprobe.events import iter_events


def test_flagged_then_fixed_and_learning(load_example, tmp_path, capsys):
    example = load_example("adding_problem")
    result = example.main(["--out", str(tmp_path)])
    output = capsys.readouterr().out
    assert result["broken"] > 0.15  # stuck at the 0.167 baseline
    assert result["fixed"] < 0.05  # well under it
    assert "GP202 forget-gate-bias [error]" in output and "GP101 vanishing-gradient" in output
    assert "chrono init of forget/input biases" in output
    assert "1: forget bias -3" in output and "2: gradprobe fixes" in output
    broken = {e["code"] for e in iter_events(tmp_path / "broken.log") if e["kind"] == "finding"}
    assert {"GP101", "GP202"} <= broken
