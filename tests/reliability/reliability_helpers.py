"""Reliability suite helpers: the repo root, one-line error checks, the CLI in a child process.

A plain module (not conftest.py, which would shadow tests/conftest.py as the module `conftest`)."""

import os
import subprocess
import sys
from pathlib import Path

from cifarlab.cli import main

REPO = Path(__file__).resolve().parents[2]


def one_line_error(argv: list[str], capsys, code: int = 2) -> str:
    """Run the CLI in-process; assert the exit code and that the whole of stderr is one error line (no
    traceback, no warning or note before it); return that line."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == code, err
    assert err.endswith("\n") and err.count("\n") == 1, f"stderr is not exactly one line:\n{err}"
    assert err.startswith(("error:", "interrupted", "unexpected")), err
    return err.rstrip("\n")


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """`python -m cifarlab ARGS` in a child process, one thread (bit-identical across runs), pipes."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "cifarlab", *map(str, args)], cwd=REPO, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
