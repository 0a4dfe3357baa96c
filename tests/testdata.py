"""Test data: where the shared real data lives (../shared/data beside the repo), a skip for machines
without it, a writer for small synthetic CIFAR-10 image trees, and tiny in-memory data and configs.

A plain module, not conftest.py: test files import from it by name, and two conftest.py files
(tests/ and tests/reliability/) would shadow each other as the module `conftest`."""

import importlib
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab import CLASSES
from cifarlab.config import resolve_config
from cifarlab.data import Cifar10

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_TARBALL = SHARED_DATA / "cifar10-jpeg.tar.gz"
# Every variable through which the code, matplotlib, torch or a browser may write into the user's home
# or a shared cache; tests/conftest.py points each into the session's private folder.
PRIVATE_DIRS = {"HOME": "home", "CIFARLAB_HOME": "cifarlab", "XDG_CACHE_HOME": "xdg-cache",
                "XDG_CONFIG_HOME": "xdg-config", "XDG_DATA_HOME": "xdg-data", "MPLCONFIGDIR": "matplotlib",
                "TORCH_HOME": "torch", "TORCHINDUCTOR_CACHE_DIR": "torchinductor", "TRITON_CACHE_DIR": "triton"}
# Settings from a developer's shell that would change what the tests read; cleared for the session.
CLEARED = ("CIFARLAB_DATA", "CIFARLAB_TESTSET", "CIFARLAB_DEBUG")


def skip_if_missing(path: Path) -> Path:
    """Skip the calling test when shared data is not on this machine."""
    if not path.exists():
        pytest.skip(f"{path} not found (shared data only exists on dev/CI machines)")
    return path


def require(ok: object, reason: str) -> None:
    """Skip the calling test when `ok` is false, with the reason; under CI=true fail it instead, since CI
    installs everything and a silent skip there would hide a test that never ran."""
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, reason: str) -> ModuleType:
    """`import name` for the calling test, else `require` (skip, or fail under CI=true)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        require(False, f"{reason} ({e})")


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


def write_real_tree(cifar: Cifar10, root: Path, n_train: int = 100, n_val: int = 50) -> Path:
    """train/<class>/ and test/<class>/ PNGs of the first n_train (n_val) real images of each class: a small
    real CIFAR-10 for tests that start other processes (workers, torchrun), which read it as --data."""
    for split, x, y, n in (("train", cifar.train_x, cifar.train_y, n_train), ("test", cifar.val_x, cifar.val_y, n_val)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in (y == c).nonzero().flatten()[:n].tolist():
                Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(root / split / name / f"{i}.png")
    return root


def toy_data(n_train=200, n_val=100, seed=0) -> Cifar10:
    """Learnable toy set: each class is a distinct mean colour plus noise."""
    g = torch.Generator().manual_seed(seed)

    def make(n):
        y = torch.arange(n) % 10
        base = (torch.arange(10).float() * 25).view(10, 1, 1, 1).expand(10, 3, 32, 32).clone()
        base[:, 1] = 255 - base[:, 1]
        x = base[y] + torch.randn(n, 3, 32, 32, generator=g) * 20
        return x.clamp(0, 255).to(torch.uint8), y

    tx, ty = make(n_train)
    vx, vy = make(n_val)
    return Cifar10(tx, ty, vx, vy, CLASSES, "toy")


def quick_cfg(preset="imp1", *sets, epochs=2):
    return resolve_config(preset, ["batch_size=32", "eval_batch_size=64", *sets], epochs=epochs)
