"""Shared fixtures: the real CIFAR-10 copy in ../shared/data, decoded once per test session."""

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


@pytest.fixture(scope="session")
def real_cifar_cache(tmp_path_factory) -> Path:
    """A per-session cache folder, so tests never touch ~/.cache."""
    return tmp_path_factory.mktemp("real_cache")


@pytest.fixture(scope="session")
def real_cifar(real_cifar_cache):
    """The real 60k CIFAR-10 (JPEG q75 copy), decoded once per session into real_cifar_cache."""
    from cifarlab.data import load_cifar10

    return load_cifar10(skip_if_missing(REAL_TARBALL), cache_dir=real_cifar_cache)


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory):
    """A 10-class image-folder CIFAR look-alike: 6 train and 3 test PNGs per class."""
    root = tmp_path_factory.mktemp("tiny") / "cifar"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = np.full((32, 32, 3), c * 25, np.uint8) + rng.integers(0, 20, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root
