"""Reliability suite helpers: a private cache per test, a tiny CIFAR-10 image tree, one-line error checks."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab import CLASSES
from cifarlab.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARLAB_HOME", str(tmp_path / "home"))
    for var in ("CIFARLAB_DATA", "CIFARLAB_TESTSET", "CIFARLAB_DEBUG"):
        monkeypatch.delenv(var, raising=False)


def write_tree(root: Path, n_train: int = 6, n_test: int = 2, seed: int = 0) -> Path:
    """train/<class>/ and test/<class>/ PNGs, each class its own colour (learnable)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = np.full((32, 32, 3), c * 25, np.uint8) + rng.integers(0, 30, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def one_line_error(argv: list[str], capsys, code: int = 2) -> str:
    """Run the CLI in-process; assert the exit code, no traceback, and an error that is one line; return it."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, err
    assert "Traceback" not in err and len(lines) >= 1, err
    assert lines[-1].startswith(("error:", "interrupted", "unexpected")), err
    return lines[-1]


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """`python -m cifarlab ARGS` in a child process, one thread (bit-identical across runs), pipes."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "cifarlab", *map(str, args)], cwd=REPO, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
