"""Augmented views of the frozen MobileNet, embedded once and shared by MNET1 and MNET2.

The frozen backbone is ~99 % of an MNET's cost, and with on-the-fly augmentation it runs once per
image per epoch. Instead, K augmented views of every training image (the study's augmentation,
drawn from a seeded generator) go through the frozen units before the backbone's last unit once;
each epoch then shows every image as one of its K views (each view once per K epochs, in a seeded
per-image order). MNET1 and MNET2 freeze the same units up to that cut, so one cache serves both.

On disk, under $CIFARLAB_HOME/views/<key>/: `train_view<v>.npy` (N, C, H, W) float16 per view,
`val.npy` (the un-augmented validation images), each with a `.sha256` file. The key hashes the
frozen units' weights, the input size, the images, the augmentation, K and the seed, so any change
builds a new cache. Arrays are memory-mapped: a view of 50,000 images at 128 px (4x4x1024 after
conv_dw_13) is 1.6 GB on disk, and only the epoch's gather is in memory.

Safety: files are written as `.NAME.PID.part`, fsynced, hashed and renamed (a killed pass keeps the
views it finished and redoes only the one in progress); a view whose hash does not match is deleted
and rebuilt with a one-line notice; an flock on the folder makes a second process wait for the first
instead of writing the same files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from cifarlab.data.augment import AugmentConfig, augment_batch
from cifarlab.io import write_text
from cifarlab.models.transfer import TransferNet
from cifarlab.train import runctl
from cifarlab.train.progress import Progress

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent builders are then not excluded
    fcntl = None

VERSION = 1
CHUNK = 16  # images per frozen forward: with keep_freed_memory the fastest on CPU (benchmarks/embed_alloc.py)


@dataclass
class Views:
    """K memory-mapped training views and the validation features."""
    train: list[np.ndarray]  # K arrays (N, C, H, W) float16
    val: np.ndarray  # (N_val, C, H, W) float16
    folder: Path

    @property
    def k(self) -> int:
        return len(self.train)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.train) + self.val.nbytes


def view_order(n: int, k: int, seed: int) -> torch.Tensor:
    """Each image's view offset: in epoch e image i is shown as view (offset[i] + e - 1) % k."""
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed + 104_729))


def epoch_features(views: Views, epoch: int, seed: int) -> torch.Tensor:
    """This epoch's training features (N, C, H, W) float16: every image as one of its views."""
    n = len(views.train[0])
    which = (view_order(n, views.k, seed) + epoch - 1) % views.k
    out = torch.empty((n, *views.train[0].shape[1:]), dtype=torch.float16)
    for v in range(views.k):
        idx = torch.nonzero(which == v).flatten().numpy()
        out[torch.from_numpy(idx)] = torch.from_numpy(np.asarray(views.train[v][idx]))
    return out


def cache_key(model: TransferNet, train_x: torch.Tensor, val_x: torch.Tensor, aug: AugmentConfig,
              k: int, seed: int) -> str:
    h = hashlib.sha256(f"cifarlab-views-v{VERSION}\0{model.input_size}\0{model.n_shared}\0{aug}\0{k}\0{seed}".encode())
    for name, t in model.frozen[:model.n_shared].state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for x in (train_x, val_x):
        h.update(str(tuple(x.shape)).encode())
        h.update(x.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def load_or_build(model: TransferNet, train_x: torch.Tensor, val_x: torch.Tensor, aug: AugmentConfig, k: int,
                  seed: int, cache_dir: Path, quiet: bool = False, log: Callable[[str], None] = print) -> Views:
    """The K views and validation features, built where missing or corrupt (under the folder's lock)."""
    folder = Path(cache_dir) / "views" / cache_key(model, train_x, val_x, aug, k, seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"train_view{v}.npy" for v in range(k)] + ["val.npy"]
    with _locked(folder, log):
        for name in names:
            if _verified(folder / name):
                continue
            if name == "val.npy":
                _build(folder / name, model, val_x, None, None, quiet, "embedding validation set")
            else:
                v = int(name[len("train_view"):-4])
                gen = torch.Generator().manual_seed(seed * 1_000_003 + 7_777 + v)
                _build(folder / name, model, train_x, aug, gen, quiet, f"embedding training view {v + 1}/{k}")
        write_text(folder / "info.json", json.dumps({"k": k, "seed": seed, "augment": str(aug),
                                                     "images": len(train_x), "val_images": len(val_x)}) + "\n")
    arrays = [np.load(folder / name, mmap_mode="r") for name in names]
    return Views(train=arrays[:-1], val=arrays[-1], folder=folder)


def _build(path: Path, model: TransferNet, x: torch.Tensor, aug: AugmentConfig | None,
           gen: torch.Generator | None, quiet: bool, label: str) -> None:
    """Embed x (augmented with `gen` draws if aug) into path, atomically, with its .sha256 beside it."""
    device = next(model.parameters()).device
    shape = model.embed_shared(torch.zeros(1, 3, *x.shape[-2:], device=device)).shape[1:]
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    progress = Progress(math.ceil(len(x) / CHUNK), label, quiet)
    try:
        out = np.lib.format.open_memmap(part, mode="w+", dtype=np.float16, shape=(len(x), *shape))
        for i in range(0, len(x), CHUNK):
            runctl.check_stop(0, i // CHUNK, progress.total, label)  # a pass takes minutes: Ctrl-C must not wait
            xb = x[i:i + CHUNK].to(device).float().div_(255)
            if aug is not None:
                xb = augment_batch(xb, aug, gen)
            out[i:i + CHUNK] = model.embed_shared(xb).half().cpu().numpy()
            progress.update(i // CHUNK + 1)
        out.flush()
        del out
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        # the hash first, then the rename: a kill between them leaves no finished view without its hash
        write_text(path.with_name(path.name + ".sha256"), _sha256(part) + "\n")
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _verified(path: Path) -> bool:
    """A finished file whose contents hash to its recorded SHA-256; a mismatch is deleted (rebuilt)."""
    sidecar = path.with_name(path.name + ".sha256")
    if not path.is_file() or not sidecar.is_file():
        return False
    if _sha256(path) == sidecar.read_text().strip():
        return True
    print(f"note: view cache {path} is corrupt (SHA-256 mismatch); rebuilding it", file=sys.stderr)
    path.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(folder: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Exclusive use of the cache folder while checking and building; a second process waits."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f"waiting for another process that is building the view cache {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        for part in folder.glob(".*.part"):  # a killed builder's half-written file; we hold the lock
            part.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)  # releases the flock
