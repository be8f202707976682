"""The HTML page: self-contained and offline, has its charts and trends, keeps spikes, escapes every log string."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess

import pytest
import torch
from click.testing import CliRunner

import gradprobe
from gradprobe.cli import main
from gradprobe.events import EventWriter, LogFormatError
from gradprobe.report import interactive, summarize_logs
from gradprobe.report.html_report import render_html, render_static
from gradprobe.report.series import MinMaxSeries
from gradprobe.report.svg import _ticks

HOSTILE = '<script>alert("x")</script>&"\'<img src=x onerror=alert(1)>\u2028</script><!--'
BUNDLE = interactive.plotly_bundle()
needs_plotly = pytest.mark.skipif(BUNDLE is None, reason="plotly is not installed (pip install 'gradprobe[html]')")


def _figures(page: str) -> list[tuple[dict, dict]]:
    """The (data, layout) of every chart, parsed back from the page's script."""
    calls = re.findall(r"Plotly\.newPlot\(\"(chart\d+)\",(.*?),(\{\"title\".*?),\{displaylogo", page)
    return [(json.loads(data), json.loads(layout)) for _, data, layout in calls]


def _titles(page: str) -> list[str]:
    return [layout["title"]["text"] for _, layout in _figures(page)]


def _report(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["report", *args])
    return result.exit_code, result.output


# -- the static page (no plotly) --------------------------------------------------------


def test_static_page_has_its_plots_and_no_scripts(vanishing_log):
    page = render_static(summarize_logs([vanishing_log], config={}))
    for title in (
        "Gradient norm over training",
        "||dL/dh_t||: time step x training step",
        "Propagation profile ||v^T dS_T/dS_(T-k)||",
        "Per-step Jacobian spectral norm",
    ):
        assert f'aria-label="{title}' in page
    assert page.count("<svg") == 5 and len(re.findall(r"<polyline", page)) >= 4 and page.count("<rect") > 100
    assert "gradprobe[html]" in page  # says how to get the interactive page
    assert not re.search(r"(src|href)=\"?https?:", page) and "<script" not in page


def test_without_plotly_the_static_page_is_written(vanishing_log, tmp_path, monkeypatch):
    monkeypatch.setattr(interactive, "plotly_bundle", lambda: None)
    out = tmp_path / "r.html"
    code, _ = _report(str(vanishing_log), "--format", "html", "-o", str(out))
    assert code == 1 and "<script" not in out.read_text() and "<svg" in out.read_text()


def _hostile_log(path):
    writer = EventWriter(path)
    writer.write("meta", model=HOSTILE, gradprobe=HOSTILE, torch="2", settings={"every": 1, "fix": "off"}, layers=[])
    writer.write(
        "step", step=0, loss=1.0, grad_norm=1.0, params={HOSTILE: 1.0}, gates={HOSTILE: {HOSTILE: 0.5}}, nonfinite=None
    )
    writer.write(
        "deep",
        step=0,
        layer=HOSTILE,
        module=HOSTILE,
        mode=HOSTILE,
        seq_len=3,
        grad_norms=[1.0, 0.5, 0.1],
        profile=[1.0, 0.1, 0.01],
        jacobian_norms=[0.1, 0.1, 0.1],
        rate=-2.3,
        horizon=2.0,
        epsilon=1e-3,
    )
    writer.write("saturation", step=0, layer=HOSTILE, mode="LSTM", fractions={HOSTILE: 0.5}, low={}, dead_units=None)
    writer.write("fix", step=0, name=HOSTILE, applied=True, detail={})
    writer.close()
    with open(path, "a") as handle:
        handle.write(HOSTILE + "\n")  # a corrupt line whose text is echoed in the problems list
    return path


def test_static_page_escapes_every_log_string(tmp_path):
    page = render_static(summarize_logs([_hostile_log(tmp_path / "hostile.log")], config={}))
    assert "<script" not in page and "<img" not in page and "&lt;script&gt;" in page


# -- the interactive page ---------------------------------------------------------------


@needs_plotly
def test_interactive_page_is_self_contained_with_its_charts(vanishing_log, tmp_path):
    out = tmp_path / "r.html"
    code, _ = _report(str(vanishing_log), "--format", "html", "-o", str(out))
    page = out.read_text()
    assert code == 1
    assert page.count(BUNDLE) == 1 and page.count("<script") == 2  # the inlined bundle, then the charts
    body = page.replace(BUNDLE, "")  # (the bundle's own code mentions URLs it never loads for these charts)
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", body) and "<link" not in body
    titles = _titles(page)
    for wanted in (
        "Gradient norm over training",
        "Loss over training",  # (a vanilla RNN has no gates)
        "RNN.l0: horizon and decay rate at each deep probe",
        "RNN.l0: ||dL/dh_t||",
        "RNN.l0: propagation profile",
        "RNN.l0: per-step Jacobian spectral norm",
        "RNN.l0: top Lyapunov exponents at each deep probe",
    ):
        assert any(t.startswith(wanted) for t in titles), (wanted, titles)
    trend = next(data for data, layout in _figures(page) if "horizon and decay" in layout["title"]["text"])
    assert trend[0]["x"] == [0, 8, 16]  # one point per deep probe


@needs_plotly
def test_interactive_page_escapes_every_log_string(tmp_path):
    page = render_html(summarize_logs([_hostile_log(tmp_path / "hostile.log")], config={}))
    body = page.replace(BUNDLE, "")
    assert body.count("<script") == 2 and body.count("</script>") == 2  # only ours: the log cannot close one
    assert "<img" not in body and "<!--" not in body
    script = body[body.rindex("<script>") :]
    assert "\u2028" not in script and "\\u003c" in script  # no raw line separator or '<' inside the script
    for data, layout in _figures(page):  # chart text is HTML to Plotly: it arrives escaped
        text = json.dumps([layout["title"]["text"], [trace.get("name", "") for trace in data]])
        assert "<script" not in text and "<img" not in text


def _long_log(path, steps: int, every: int, spikes: dict[int, float]) -> None:
    """A synthetic log of ``steps`` steps: noisy norms, a few spikes, a deep probe every ``every`` steps."""
    writer = EventWriter(path, flush_seconds=60)
    writer.write(
        "meta",
        model="LongRun",
        settings={"every": every, "fix": "off"},
        layers=[{"name": "rnn", "type": "LSTM", "kind": "stack", "mode": "LSTM"}],
    )
    for step in range(steps):
        norm = spikes.get(step, 1.0 + 0.3 * math.sin(step * 0.37) + 0.1 * ((step * 7919) % 13) / 13)
        gates = {"rnn.weight_hh_l0": {"input": norm / 4, "forget": norm / 5, "cell": norm / 3, "output": norm / 6}}
        writer.write(
            "step", step=step, loss=2.0 / (1 + step / 1000), grad_norm=norm, params={}, gates=gates, nonfinite=None
        )
        if step % every == 0:
            profile = [math.exp(-0.05 * k) for k in range(50)]
            writer.write(
                "deep",
                step=step,
                layer="rnn.l0",
                module="rnn",
                mode="LSTM",
                seq_len=50,
                grad_norms=[10.0 ** (-22 * (49 - t) / 49) for t in range(50)],
                profile=profile,
                jacobian_norms=[0.95] * 50,
                rate=-0.05 - step * 1e-7,
                horizon=60.0 + step / 1000,
                epsilon=1e-3,
            )
            writer.write(
                "saturation",
                step=step,
                layer="rnn.l0",
                mode="LSTM",
                fractions={"input": 0.1, "forget": 0.2 + step / steps / 2},
                low={},
                dead_units=None,
            )
    writer.close()


@needs_plotly
def test_a_100k_step_log_keeps_its_spikes_trends_and_a_bounded_page(tmp_path):
    steps, every = 100_000, 500
    spikes = {12_345: 250.0, 60_001: 90.0, 99_998: 400.0}
    path = tmp_path / "long.log"
    _long_log(path, steps, every, spikes)
    out = tmp_path / "long.html"
    code, _ = _report(str(path), "--format", "html", "-o", str(out))
    assert code in (0, 1)
    page = out.read_text()
    assert len(page) - len(BUNDLE) < 1_500_000  # the data part stays small for any run length
    figures = {layout["title"]["text"]: data for data, layout in _figures(page)}
    norm = next(data for title, data in figures.items() if title.startswith("Gradient norm over training"))[0]
    assert len(norm["x"]) <= 2 * 2000
    for step, value in spikes.items():  # every spike survives the down-sampling, at its own step
        assert (step, value) in zip(norm["x"], norm["y"])
    trend = next(data for title, data in figures.items() if "horizon and decay" in title)
    assert len(trend[0]["x"]) == steps // every
    assert trend[0]["y"][-1] == 50.0  # a horizon of 159.5 steps on a sequence of T=50 is drawn at T
    saturation = next(data for title, data in figures.items() if "saturated share" in title)
    assert {t["name"] for t in saturation} == {"input", "forget"} and len(saturation[0]["x"]) == steps // every
    gates = next(data for title, data in figures.items() if title.startswith("Gradient norm per gate"))
    assert {t["name"] for t in gates} == {"input", "forget", "cell", "output"}
    heat = next(data for title, data in figures.items() if "||dL/dh_t||" in title)[0]
    assert heat["zmax"] - heat["zmin"] <= interactive.HEATMAP_DECADES and len(heat["colorbar"]["tickvals"]) <= 7


def test_min_max_series_keeps_the_extremes_of_every_bucket():
    series = MinMaxSeries(limit=64)
    values = [math.sin(i / 50) for i in range(10_000)]
    values[7_777] = 99.0
    values[3_000] = -50.0
    for step, value in enumerate(values):
        series.add(step, value)
    series.add(10_000, float("nan"))
    xs, ys = series.points()
    assert len(series) < 64 and xs == sorted(xs)
    assert (7_777, 99.0) in zip(xs, ys) and (3_000, -50.0) in zip(xs, ys)
    assert max(ys) == 99.0 and min(ys) == -50.0 and series.nonfinite_steps() == [10_000 - 10_000 % series.width]


def test_heatmap_scale_is_legible_over_22_decades():
    low, high, ticks, labels = interactive.heatmap_scale([-22.0, 0.3])
    assert high == 1 and high - low == interactive.HEATMAP_DECADES
    assert (
        2 <= len(ticks) <= interactive.HEATMAP_LABELS and labels[-1] == "1e1" and all(low <= t <= high for t in ticks)
    )


@needs_plotly
def test_compare_overlays_two_runs_and_keeps_them_apart(vanishing_log, healthy_log, tmp_path):
    out = tmp_path / "compare.html"
    code, _ = _report(str(vanishing_log), "--compare", str(healthy_log), "--format", "html", "-o", str(out))
    assert code == 1  # the first run's verdict
    page = out.read_text()
    norm = next(
        data for data, layout in _figures(page) if layout["title"]["text"].startswith("Gradient norm over training")
    )
    names = [trace["name"] for trace in norm]
    assert names == [f"{vanishing_log.name}: ||grad||", f"{healthy_log.name}: ||grad||"]
    assert norm[1]["line"]["dash"] == "dot"
    assert "Findings of healthy.log" in page
    with pytest.raises(LogFormatError, match="not the ranks of one distributed run"):
        summarize_logs([vanishing_log, healthy_log], config={})  # two runs are never merged as one


def test_compare_in_text_and_json(vanishing_log, healthy_log):
    code, text = _report(str(vanishing_log), "--compare", str(healthy_log))
    assert code == 1 and "Compared with healthy.log:" in text
    assert re.search(r"run\.log: 24 steps.*verdict FAIL", text) and re.search(
        r"healthy\.log: 12 steps.*verdict ok", text
    )
    code, out = _report(str(vanishing_log), "--compare", str(healthy_log), "--format", "json")
    data = json.loads(out)
    assert data["training"]["steps"] == 24 and data["compare"]["training"]["steps"] == 12
    assert data["verdict"]["failed"] is True and data["compare"]["verdict"]["failed"] is False


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@needs_plotly
@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium on this machine (apt-get install chromium)")
def test_the_page_draws_every_chart_in_a_headless_browser(vanishing_log, tmp_path):
    out = tmp_path / "r.html"
    _report(str(vanishing_log), "--format", "html", "-o", str(out))
    expected = len(_figures(out.read_text()))
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        out.as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False).stdout
    assert dom.count('class="main-svg"') >= expected  # Plotly drew each chart (2+ svg layers per chart)
    assert len(re.findall(r'<div class="chart js-plotly-plot" id="chart\d+">', dom)) == expected


def test_nice_ticks():
    assert _ticks(0, 599) == [0, 200, 400]
    assert _ticks(0, 99) == [0, 20, 40, 60, 80]
    assert _ticks(3, 3) == [3]


def _long_sequence_log(path, length):
    """A log with one deep event over ``length`` time steps, a spike at t = length // 3."""
    writer = EventWriter(path)
    writer.write("meta", model="M", gradprobe="0", torch="2", settings={"every": 1, "fix": "off"}, layers=[])
    writer.write("step", step=0, loss=1.0, grad_norm=1.0)
    series = [0.5 + (t % 7) / 10 for t in range(length)]
    series[length // 3] = 1e6
    writer.write(
        "deep",
        step=0,
        layer="rnn.l0",
        module="RNN",
        mode="RNN",
        seq_len=length,
        batch=1,
        grad_norms=series,
        profile=series,
        jacobian_norms=series,
        rate=-0.1,
        horizon=10.0,
        epsilon=0.001,
    )
    writer.close()


def test_a_very_long_sequence_is_binned_on_the_time_axis_and_its_spike_kept(tmp_path):
    """Faults round two, case 15: the page's time axes hold at most TIME_AXIS_LIMIT points however long the
    sequence (the heatmap was padded to the widest row: 1.44 GB for T = 2.5M); a spike survives the binning."""
    import tracemalloc

    from gradprobe.report.series import TIME_AXIS_LIMIT

    length = 300_000
    path = tmp_path / "long.log"
    _long_sequence_log(path, length)
    summary = summarize_logs([path], config={})
    tracemalloc.start()
    try:
        static = render_static(summary)
        interactive_page = interactive.render_interactive(summary, "", None, None, ("run", "other"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"rendering peaked at {peak / 1e6:.0f} MB"  # 3 x 300k points drawn unbinned: ~200 MB
    assert len(static) < 1e6 and len(interactive_page) < 1e6
    figures = _figures(interactive_page)
    heat = next(data[0] for data, layout in figures if data and data[0].get("type") == "heatmap")
    assert len(heat["x"]) <= TIME_AXIS_LIMIT and heat["x"][-1] <= length
    row = heat["z"][0]
    assert max(v for v in row if v is not None) == pytest.approx(6.0)  # log10 of the spike
    spike_column = max(range(len(row)), key=lambda c: row[c] if row[c] is not None else -1)
    assert heat["x"][spike_column] <= length // 3 < heat["x"][spike_column] + (heat["x"][1] - heat["x"][0])
    for data, layout in figures:
        if layout["title"]["text"].startswith(("rnn.l0: propagation profile", "rnn.l0: per-step Jacobian")):
            assert len(data[0]["x"]) <= TIME_AXIS_LIMIT and max(data[0]["y"]) == pytest.approx(1e6)


def test_the_horizon_chart_caps_at_t_on_a_log_axis_with_lines_for_t_and_the_need(tmp_path):
    """The fixed run's horizon, extrapolated to 62,014 steps on T=100, would flatten the broken run's 12 to 0:
    both are drawn at most at T, on a log axis, with T and the declared need as dashed lines."""
    runs = {}
    for name, horizon in (("broken", 12.0), ("fixed", 62014.0)):
        path = tmp_path / f"{name}.log"
        writer = EventWriter(path)
        writer.write("meta", model="M", gradprobe="0", torch="2", settings={"every": 1, "dependency_length": 100})
        for step in range(3):
            writer.write("step", step=step, loss=1.0, grad_norm=1.0)
            writer.write(
                "deep", step=step, layer="rnn.l0", module="rnn", mode="LSTM", seq_len=100, batch=4,
                grad_norms=[1.0] * 100, profile=[0.9**k for k in range(100)], rate=-0.1, horizon=horizon,
            )  # fmt: skip
        writer.close()
        runs[name] = path
    page = interactive.render_interactive(
        summarize_logs([runs["broken"]], config={}), "", None, summarize_logs([runs["fixed"]], config={}),
        ("broken.log", "fixed.log"),
    )  # fmt: skip
    data, layout = next((d, lay) for d, lay in _figures(page) if "horizon and decay" in lay["title"]["text"])
    horizons = {trace["name"]: trace["y"] for trace in data if trace["name"].endswith("horizon (steps)")}
    assert horizons == {"broken.log: horizon (steps)": [12.0] * 3, "fixed.log: horizon (steps)": [100.0] * 3}
    assert layout["yaxis"]["type"] == "log"
    assert sorted(shape["y0"] for shape in layout["shapes"]) == [100.0, 100.0]  # T and the declared need
    assert {trace["name"] for trace in data} >= {"T (the sequence): 100", "declared need: 100"}


def test_the_text_report_says_a_horizon_past_the_sequence_reaches_all_of_it(tmp_path):
    from gradprobe.report.summary import horizon_text
    from gradprobe.report.text import render_text

    assert horizon_text(62013.9, 100) == "> T (the whole sequence of 100)"
    assert horizon_text(12.0, 100) == "12 steps" and horizon_text(None, 100) == "none (no decay)"
    path = tmp_path / "run.log"
    writer = EventWriter(path)
    writer.write("meta", model="M", gradprobe="0", torch="2", settings={"every": 1})
    writer.write("step", step=0, loss=1.0, grad_norm=1.0)
    writer.write(
        "deep", step=0, layer="rnn.l0", module="rnn", mode="LSTM", seq_len=53, batch=4,
        grad_norms=[1.0] * 53, profile=[1.0] * 53, rate=-0.001, horizon=1344.0, lyapunov=[-0.01],
    )  # fmt: skip
    writer.close()
    text = render_text(summarize_logs([path], config={}))
    assert "T=53, horizon > T (the whole sequence of 53)" in text and "horizon 1344" not in text
    assert "lambda1 > 0: the state dynamics expand" in text  # the figures are explained where they are printed


@pytest.mark.parametrize("page_kind", ["interactive", "static"])
def test_the_page_opens_with_a_summary_box_and_says_under_each_chart_what_healthy_looks_like(
    vanishing_log, healthy_log, page_kind
):
    summary = summarize_logs([vanishing_log], config={})
    other = summarize_logs([healthy_log], config={})
    if page_kind == "interactive":
        page = interactive.render_interactive(summary, "", None, other, ("run.log", "healthy.log"))
    else:
        page = render_static(summary, None, other, ("run.log", "healthy.log"))
    box = page[page.index("<div class='summary'") : page.index("</div>", page.index("<div class='summary'"))]
    assert "Verdict: <b>FAIL</b>" in box
    gp101 = next(f for f in summary.findings if f.code == "GP101")
    assert f"GP101 vanishing-gradient</b> [{gp101.severity}]" in box
    assert f"seen from step {gp101.first_step} to step {gp101.last_step}" in box and gp101.first_step == 0
    assert f"<pre><code>{html.escape(gp101.fix)}</code></pre>" in box
    assert page.index("<div class='summary'") < page.index("<h2>Findings</h2>")  # at the top
    assert page.count("<p class='caption'>") >= 4 and "Healthy: the colour fades slowly" in page
    assert "Findings of healthy.log" in page  # the compared run, on the static page too
    if page_kind == "static":
        assert page.count("stroke-dasharray") >= 2  # its training curves and profile, dashed


def test_every_per_layer_chart_shows_the_compared_run(vanishing_log, tmp_path):
    """--compare on a fixed rerun (same layers): each per-layer chart overlays it, dotted; a heatmap cannot, so
    the compared run gets its own."""
    from tests.report.conftest import write_run

    fixed_log = tmp_path / "fixed.log"
    rnn = torch.nn.RNN(2, 16)
    gradprobe.fixes.reinit.orthogonal_recurrent_(rnn)
    write_run(fixed_log, model=rnn, seq_len=120, steps=24, every=8, dependency_length=120)
    page = interactive.render_interactive(
        summarize_logs([vanishing_log], config={}), "", None, summarize_logs([fixed_log], config={}),
        ("run.log", "fixed.log"),
    )  # fmt: skip
    per_layer = [
        (data, layout["title"]["text"]) for data, layout in _figures(page) if "RNN.l0" in layout["title"]["text"]
    ]
    assert len(per_layer) >= 6
    for data, title in per_layer:
        if data and data[0].get("type") == "heatmap":
            continue  # a heatmap cannot overlay: the compared run has its own, below
        assert any(str(trace.get("name", "")).startswith("fixed.log: ") for trace in data), title
    heatmaps = [title for data, title in per_layer if data and data[0].get("type") == "heatmap"]
    assert any("(fixed.log)" in title for title in heatmaps) and len(heatmaps) == 2
