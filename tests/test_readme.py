"""The README a newcomer reads: its quick start runs as pasted, its links lead somewhere, it stays short."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _quick_start() -> str:
    section = README[README.index("## Quick start") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block under '## Quick start'"
    return match.group(1)


def test_the_quick_start_runs_as_pasted(tmp_path):
    """Copied into a file and run in an empty folder: it trains, prints its findings with their fixes, and
    leaves a run log that `gradprobe report` reads."""
    script = tmp_path / "quick_start.py"
    script.write_text(_quick_start(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"^GP101 vanishing-gradient \[error\] rnn\.l0", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^    fix: ", done.stdout, re.MULTILINE)  # a printed finding ends with its fix
    report = subprocess.run(
        [sys.executable, "-m", "gradprobe.cli", "report", "run.log"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert report.returncode == 1 and "GP101" in report.stdout, report.stdout + report.stderr


def test_every_local_link_of_the_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readme_is_short_and_speaks_to_users():
    assert len(README.splitlines()) <= 250
    for words in ("this stop", "last stop", "next stop"):
        for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
            assert words not in page.read_text(encoding="utf-8").lower(), f"{page.name}: {words!r}"
