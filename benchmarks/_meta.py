"""What every benchmark JSON records about the run itself: the code (git commit, and whether the tree
had uncommitted changes) and how busy the machine was (load average at start and at the end), since
img/s on a shared machine mean little without it. Scripts run as `python benchmarks/X.py` import it
by name (their folder is first on sys.path)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    """The checked-out commit, with "-dirty" if tracked files differ from it; None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none, e.g. Windows)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_meta(load_at_start: list[float] | None) -> dict[str, Any]:
    """Fields to merge into a benchmark's JSON when it is written: pass loadavg() taken at its start."""
    return {"git_commit": git_commit(), "cpus": os.cpu_count(), "loadavg_start": load_at_start,
            "loadavg_end": loadavg()}
