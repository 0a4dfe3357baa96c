"""Images to explain, read exactly as `cifarlab evaluate --testset` reads them (one hardened loader):
a photo file, a flat folder of photos, or a test set of class folders. A photo's true class is known
when its folder is named after a class."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlab import CLASSES
from cifarlab.data.testset import TestSet, UnreadablePhoto, load_photo, load_testset, prepare_photo
from cifarlab.errors import UserError


@dataclass
class Photos:
    x: torch.Tensor  # uint8 (N, 3, 32, 32), as the models are evaluated
    labels: list[int | None]  # true class index, None when unknown
    names: list[str]

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: list[int]) -> "Photos":
        return Photos(self.x[idx], [self.labels[i] for i in idx], [self.names[i] for i in idx])


def from_testset(ts: TestSet) -> Photos:
    return Photos(ts.x, ts.y.tolist(), list(ts.paths))


def load_images(path: str | os.PathLike, fit: str = "crop", filtered: bool = False,
                limit: int | None = None) -> Photos:
    """Every readable photo under path (unreadable ones skipped with a warning, as evaluate does);
    with `limit`, that many spread evenly over the list (so a test set shows several classes)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"--image {path}: no such file or folder")
    if path.is_file():
        photos = Photos(_prepare(path, fit, filtered)[None], [_label(path)], [path.name])
    elif any(e.is_dir() and e.name in CLASSES for e in os.scandir(path)):
        ts = load_testset(path, filtered=filtered, fit=fit)
        for rel, reason in ts.skipped:
            print(f"warning: skipped {path / rel}: {reason}", file=sys.stderr)
        photos = from_testset(ts)
    else:
        photos = _flat_folder(path, fit, filtered)
    if limit is not None and len(photos) > limit:
        print(f"note: {path}: showing {limit} of {len(photos)} images, spread evenly (--max-images)", file=sys.stderr)
        photos = photos.take(np.linspace(0, len(photos) - 1, limit).round().astype(int).tolist())
    return photos


def _prepare(path: Path, fit: str, filtered: bool) -> torch.Tensor:
    img = prepare_photo(load_photo(path), filtered=filtered, fit=fit)
    return torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy())


def _label(path: Path) -> int | None:
    return CLASSES.index(path.parent.name) if path.parent.name in CLASSES else None


def _flat_folder(root: Path, fit: str, filtered: bool) -> Photos:
    files = sorted(e.name for e in os.scandir(root) if e.is_file() and not e.name.startswith("."))
    xs, names, labels = [], [], []
    for name in files:
        try:
            xs.append(_prepare(root / name, fit, filtered))
        except UnreadablePhoto as e:
            print(f"warning: skipped {root / name}: {e.reason}", file=sys.stderr)
            continue
        names.append(name)
        labels.append(_label(root / name))
    if not xs:
        raise UserError(f"--image {root}: no readable images" + (f" ({len(files)} unreadable files)" if files else ""))
    return Photos(torch.stack(xs), labels, names)
