"""Shared fixtures: a private home for the whole session, and the real CIFAR-10 copy in ../shared/data,
decoded once per test session."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from testdata import CLEARED, PRIVATE_DIRS, REAL_TARBALL, skip_if_missing, write_tree

_saved_env: dict[str, str | None] = {}


def pytest_configure(config):
    """Point HOME and every cache variable into one private folder for the whole session. Done here, not
    in an autouse fixture: test modules import matplotlib while being collected, and matplotlib fixes
    (and creates) its config and cache folders on import."""
    root = Path(tempfile.mkdtemp(prefix="cifarlab-tests-"))
    config.private_home = root
    for var, sub in PRIVATE_DIRS.items():
        _saved_env[var] = os.environ.get(var)
        (root / sub).mkdir()
        os.environ[var] = str(root / sub)
    for var in CLEARED:
        _saved_env[var] = os.environ.pop(var, None)
    # reproduce's ETA would probe the CPU for a few seconds each call; test_speed.py probes it for real
    _saved_env["CIFARLAB_MACHINE_SPEED"] = os.environ.get("CIFARLAB_MACHINE_SPEED")
    os.environ["CIFARLAB_MACHINE_SPEED"] = "1"


def pytest_unconfigure(config):
    for var, value in _saved_env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    if hasattr(config, "private_home"):
        shutil.rmtree(config.private_home, ignore_errors=True)


@pytest.fixture(scope="session")
def real_cifar_cache(tmp_path_factory) -> Path:
    """A per-session cache folder for the decoded real data (tests that need an empty cache use their own)."""
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
