"""Shared fixtures: the real CIFAR-10 copy in ../shared/data, decoded once per test session."""

from pathlib import Path

import pytest
from testdata import REAL_TARBALL, skip_if_missing, write_tree


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
    return write_tree(tmp_path_factory.mktemp("tiny") / "cifar", n_train=6, n_test=3, noise=20)
