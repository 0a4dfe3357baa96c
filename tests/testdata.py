"""Test data: where the shared real data lives (../shared/data beside the repo), a skip for machines
without it, and a writer for small synthetic CIFAR-10 image trees.

A plain module, not conftest.py: test files import from it by name, and two conftest.py files
(tests/ and tests/reliability/) would shadow each other as the module `conftest`."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab import CLASSES

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_TARBALL = SHARED_DATA / "cifar10-jpeg.tar.gz"


def skip_if_missing(path: Path) -> Path:
    """Skip the calling test when shared data is not on this machine."""
    if not path.exists():
        pytest.skip(f"{path} not found (shared data only exists on dev/CI machines)")
    return path


def write_tree(root: Path, n_train: int = 6, n_test: int = 2, seed: int = 0, noise: int = 30) -> Path:
    """train/<class>/ and test/<class>/ PNGs, each class its own grey level plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = np.full((32, 32, 3), c * 25, np.uint8) + rng.integers(0, noise, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root
