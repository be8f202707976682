"""Distributed runs: one run log per rank, found again by the report.

When ``torch.distributed`` is initialized with more than one process, every
rank that is given the same ``log=`` path (the natural code) writes its own
file, ``run.rank{N}.log`` beside ``run.log``; ``gradprobe report run.log``
then reads all of them as one run. Paths that already name the rank are kept.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from gradprobe.faults import warn


def rank_and_world() -> tuple[int | None, int]:
    """This process's rank and the world size of an initialized torch.distributed group, else ``(None, 1)``.

    Reads torch only when the process has imported it (a group cannot be initialized otherwise): the report,
    which finds rank files through this module, never imports torch.
    """
    torch = sys.modules.get("torch")
    distributed = getattr(torch, "distributed", None) if torch is not None else None
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        return int(distributed.get_rank()), int(distributed.get_world_size())
    return None, 1


def rank_path(path: str | os.PathLike[str], rank: int) -> Path:
    """``run.log`` -> ``run.rank3.log`` (the rank goes before the last suffix)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def log_path_for_this_rank(path: str | os.PathLike[str]) -> Path:
    """The path this process writes: its own rank file in a multi-process run, else ``path`` unchanged.

    Rank 0 says so once (a :class:`~gradprobe.faults.GradprobeWarning`), naming the files.
    """
    rank, world = rank_and_world()
    path = Path(path)
    if rank is None or world < 2 or _names_rank(path, rank):
        return path
    if rank == 0:
        warn(
            f"gradprobe: {world} ranks share the log path {path}: each rank writes its own file "
            f"({rank_path(path, 0).name} ... {rank_path(path, world - 1).name}); 'gradprobe report {path}' reads them all",
            stacklevel=6,
        )
    return rank_path(path, rank)


def _names_rank(path: Path, rank: int) -> bool:
    """``run.rank3.log``, ``rank_3.jsonl``: the caller already gave each rank its own file."""
    return re.search(rf"rank[-_]?{rank}(?![0-9])", path.stem, re.IGNORECASE) is not None


def expand_rank_logs(path: str | os.PathLike[str]) -> list[Path]:
    """The files a report reads for ``path``: ``path`` itself, or, when it is absent, its rank files in rank order."""
    path = Path(path)
    if path.exists():
        return [path]
    pattern = re.compile(rf"^{re.escape(path.stem)}\.rank([0-9]+){re.escape(path.suffix)}$")
    found = []
    if path.parent.is_dir():
        for sibling in path.parent.iterdir():
            match = pattern.match(sibling.name)
            if match:
                found.append((int(match.group(1)), sibling))
    return [p for _, p in sorted(found)] or [path]
