"""Run the corpus of real training scripts in full and print the verdict table (README, "Verdicts on real runs").

    python benchmarks/corpus_table.py            # every script and variant, full length (~2-3 min on 2 cores)
    python benchmarks/corpus_table.py --quick    # the reduced runs the test suite uses

Healthy runs must learn (final loss well below the initial one) and raise no
warning or error; each broken twin must raise its intended code at warning
or above. Exits 1 when a verdict is wrong.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

CORPUS = Path(__file__).resolve().parent / "corpus"
sys.path.insert(0, str(CORPUS))

from __init__ import SCRIPTS  # type: ignore[import-not-found]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"corpus_{name}", CORPUS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the reduced step counts of the test suite")
    parser.add_argument("--only", nargs="*", default=None, help="script names")
    args = parser.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message="LSTM with projections is not supported with oneDNN")
    rows = [
        "| script | variant | expected | steps | loss start -> end | warnings and errors raised | verdict | time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    wrong = 0
    for name in args.only or SCRIPTS:
        module = load(name)
        for variant, expected in module.VARIANTS.items():
            start = time.perf_counter()
            result = module.main(variant, module.QUICK_STEPS if args.quick else module.STEPS)
            took = time.perf_counter() - start
            raised = ", ".join(sorted(f"{f.code} {f.severity}" for f in result.raised)) or "none"
            learned = expected is not None or result.final_loss < 0.8 * result.initial_loss
            ok = result.verdict_ok and learned
            wrong += not ok
            rows.append(
                f"| {name} | {variant} | {expected or 'healthy'} | {result.steps} | {result.initial_loss:.4g} -> {result.final_loss:.4g} | "
                f"{raised} | {'ok' if ok else 'WRONG'} | {took:.1f} s |"
            )
            print(rows[-1], flush=True)
    print()
    print("\n".join(rows))
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
