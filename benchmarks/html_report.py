"""The HTML report: page size, build time and render time in headless Chromium, interactive against static.

Builds both pages for a short real run (the demo's adding problem, with its fixed rerun overlaid by
``--compare``) and for a long synthetic run (100k steps, the event mix of ``report_speed.py``), then
loads each page in headless Chromium and times it until the DOM is dumped (minus the time of a blank
page). ``--screenshot`` refreshes ``docs/report.png`` from the short run's interactive page.

    python benchmarks/html_report.py [--steps 100000] [--screenshot]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_speed import write_log

from gradprobe.demo import TrainingSetup, run_demo
from gradprobe.report import summarize_logs
from gradprobe.report.html_report import render_html, render_static

DOCS = Path(__file__).resolve().parents[1] / "docs"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        sys.exit("needs Chromium (apt-get install chromium)")
    return found


def load_time(page: Path, profile: Path, repeats: int = 3) -> tuple[float, int]:
    """Median seconds to load ``page`` and dump its DOM, and the number of charts Plotly drew."""
    times, drawn = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        dom = subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=20000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
        times.append(time.perf_counter() - start)
        drawn = len(re.findall(r'class="chart js-plotly-plot"', dom))
    return statistics.median(times), drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--screenshot", action="store_true", help="refresh docs/report.png")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    run_demo(work / "demo", TrainingSetup(steps=300, seq_len=60), echo=lambda _: None)
    write_log(work / "long.log", args.steps)
    blank = work / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    baseline, _ = load_time(blank, work / "profile")
    print(f"Chromium start and blank page: {baseline:.2f} s (subtracted below)")
    print("| run | page | size | build | render in Chromium | charts drawn |")
    print("|---|---|---|---|---|---|")
    cases = {
        "demo (run.log --compare fixed.log)": ([work / "demo" / "run.log"], [work / "demo" / "fixed.log"]),
        f"synthetic, {args.steps} steps": ([work / "long.log"], None),
    }
    for name, (logs, compare) in cases.items():
        summary = summarize_logs(logs, config={})
        other = summarize_logs(compare, config={}) if compare else None
        for kind in ("interactive", "static"):
            start = time.perf_counter()
            page = (
                render_html(summary, other=other, names=("run.log", "fixed.log"))
                if kind == "interactive"
                else render_static(summary)
            )
            build = time.perf_counter() - start
            path = work / f"{kind}-{len(name)}.html"
            path.write_text(page, encoding="utf-8")
            seconds, drawn = load_time(path, work / "profile")
            print(
                f"| {name} | {kind} | {len(page.encode()) / 1e6:.2f} MB | {build:.2f} s | {max(seconds - baseline, 0):.2f} s | "
                f"{drawn if kind == 'interactive' else '-'} |"
            )
            if args.screenshot and kind == "interactive" and compare:
                DOCS.mkdir(exist_ok=True)
                subprocess.run(
                    [
                        chromium(),
                        *FLAGS,
                        f"--user-data-dir={work / 'profile'}",
                        "--virtual-time-budget=20000",
                        "--window-size=1280,2600",
                        f"--screenshot={DOCS / 'report.png'}",
                        path.as_uri(),
                    ],
                    capture_output=True,
                    timeout=300,
                    check=True,
                )
                print(f"wrote {DOCS / 'report.png'}")


if __name__ == "__main__":
    main()
