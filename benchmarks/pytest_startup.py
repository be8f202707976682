"""What the pytest plugin costs a suite that never uses gradprobe (issue 10, item 12).

Writes 300 trivial tests in 30 files, then runs pytest on them in fresh
processes, interleaving runs with the gradprobe plugin loaded (as installed)
and with ``-p no:gradprobe``. Prints wall times (min/median/max) and the ratio
of medians; the target is <= 1.1x.

    python benchmarks/pytest_startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_suite(folder: Path, files: int = 30, tests_per_file: int = 10) -> None:
    (folder / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider -q\n")
    for f in range(files):
        body = "\n\n".join(f"def test_{f}_{t}():\n    assert {t} + 1 == {t + 1}" for t in range(tests_per_file))
        (folder / f"test_trivial_{f}.py").write_text(body + "\n")


def timed_run(folder: Path, *extra: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *extra], cwd=folder, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or "300 passed" not in done.stdout:
        raise SystemExit(f"pytest failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_suite(folder)
        timed_run(folder)  # warm the file cache
        with_plugin, without = [], []
        for _ in range(args.rounds):
            with_plugin.append(timed_run(folder))
            without.append(timed_run(folder, "-p", "no:gradprobe"))
    ratio = statistics.median(with_plugin) / statistics.median(without)
    for name, times in (("with gradprobe", with_plugin), ("-p no:gradprobe", without)):
        print(f"{name:<16} min {min(times):.3f} s  median {statistics.median(times):.3f} s  max {max(times):.3f} s")
    print(f"ratio of medians: {ratio:.3f}x (target <= 1.1x)")
    return {"ratio": ratio}


if __name__ == "__main__":
    main()
