"""The HTML page: self-contained, has its plots, escapes every string from the log."""

from __future__ import annotations

import re

from click.testing import CliRunner

from gradprobe.cli import main
from gradprobe.events import EventWriter
from gradprobe.report.svg import _ticks

HOSTILE = '<script>alert("x")</script>&"\'<img src=x onerror=alert(1)>'


def test_page_has_the_four_plots_and_no_external_resources(vanishing_log, tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", str(vanishing_log), "--format", "html", "-o", str(out)])
    assert result.exit_code == 1
    page = out.read_text()
    for title in (
        "Gradient norm over training",
        "||dL/dh_t||: time step x training step",
        "Propagation profile ||v^T dS_T/dS_(T-k)||",
        "Per-step Jacobian spectral norm",
    ):
        assert f'aria-label="{title}' in page
    assert page.count("<svg") == 5  # training: grad norm, loss; layer: heatmap, profile, jacobian
    assert len(re.findall(r"<polyline", page)) >= 4 and page.count("<rect") > 100  # lines and heatmap cells
    assert "fit x" in page  # fitted decay drawn beside the measured profile
    assert not re.search(r"(src|href)=\"?https?:", page) and "<script" not in page


def test_every_log_string_is_escaped(tmp_path):
    path = tmp_path / "hostile.log"
    writer = EventWriter(path)
    writer.write("meta", model=HOSTILE, gradprobe=HOSTILE, torch="2", settings={"every": 1, "fix": "off"}, layers=[])
    writer.write("step", step=0, loss=1.0, grad_norm=1.0, params={}, gates={}, nonfinite=None)
    writer.write(
        "deep", step=0, layer=HOSTILE, module=HOSTILE, mode=HOSTILE, seq_len=3, grad_norms=[1.0, 0.5, 0.1],
        profile=[1.0, 0.1, 0.01], jacobian_norms=[0.1, 0.1, 0.1], rate=-2.3, horizon=2.0, epsilon=1e-3,
    )
    writer.write("saturation", step=0, layer=HOSTILE, mode="LSTM", fractions={HOSTILE: 0.5}, low={}, dead_units=None)
    writer.write("fix", step=0, name=HOSTILE, applied=True, detail={})
    writer.close()
    with open(path, "a") as handle:
        handle.write(HOSTILE + "\n")  # a corrupt line whose text is echoed in the problems list
    out = tmp_path / "r.html"
    CliRunner().invoke(main, ["report", str(path), "--format", "html", "-o", str(out)])
    page = out.read_text()
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page


def test_nice_ticks():
    assert _ticks(0, 599) == [0, 200, 400]
    assert _ticks(0, 99) == [0, 20, 40, 60, 80]
    assert _ticks(3, 3) == [3]
