"""Opening a run log so that no two writers ever share one file.

A run log is opened without truncating it and locked (``flock``, exclusive,
not waiting) before a byte is written: a path that another live writer holds
(a second process, or a second probe in this process, given the same
``log=``) is left alone, and this run writes the first free sibling,
``run.1.log``, ``run.2.log``, ... with one warning naming it. The lock goes
with the file descriptor, so a run that is killed leaves no stale lock. Where
``fcntl`` is missing (Windows), or the file system refuses locks (some network
mounts), logs are opened without the lock.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Siblings tried before giving up (``run.1.log`` ... ``run.99.log``).
MAX_SIBLINGS = 99


def numbered(path: Path, n: int) -> Path:
    """``run.log`` -> ``run.{n}.log`` (the number goes before the last suffix)."""
    return path.with_name(f"{path.stem}.{n}{path.suffix}")


def _locked(fd: int) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another writer holds it
        return False
    except OSError:  # a file system without locks (some network mounts): written unlocked, as on Windows
        return True
    return True


def claim(path: Path) -> tuple[Path, int, bool]:
    """Open ``path`` (or its first free numbered sibling) for writing, locked, not truncated.

    Returns:
        The path opened, its file descriptor, and whether this call created the file.

    Raises:
        OSError: The folder cannot be written, the path is a folder, or every
            sibling is held by another writer.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(MAX_SIBLINGS + 1):
        candidate = path if n == 0 else numbered(path, n)
        existed = candidate.exists()
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT, 0o666)
        if _locked(fd):
            return candidate, fd, not existed
        os.close(fd)
    raise OSError(
        f"{path} and its siblings up to {numbered(path, MAX_SIBLINGS).name} are all being written by other runs"
    )
