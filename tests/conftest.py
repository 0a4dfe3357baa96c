"""Shared fixtures: the real CIFAR-10 copy in ../shared/data, decoded once per test session."""

from pathlib import Path

import pytest

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
