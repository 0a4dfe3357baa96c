"""Caches that cannot lie: decoded arrays in an .npz with a SHA-256 of their contents and a
fingerprint of the source they came from.

A cache file is used only if it unzips, its arrays hash to the stored SHA-256 (a truncated, corrupt
or tampered file is caught) and its fingerprint matches the source now (a changed source is
rebuilt). One file per source, overwritten on rebuild, so stale copies do not pile up.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from cifarlab.io import atomic_write, sweep_stale_parts

_META = ("_fingerprint", "_sha256")


class _Corrupt(ValueError):
    pass


def digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


def load(path: Path, fingerprint: str, valid: Callable[[dict[str, np.ndarray]], bool], what: str,
         notify: bool = True) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None: absent, from another source state (rebuilt quietly), or
    unusable (deleted, rebuilt, with a one-line notice)."""
    sweep_stale_parts(path.parent)  # .part files of a writer killed while saving this cache or a sibling
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # our handle: closed if np.load fails
            a = {k: z[k] for k in z.files}
        if str(a.get("_fingerprint", "")) != fingerprint:
            return None  # the source changed since: not an error
        stored = str(a.pop("_sha256", ""))
        a.pop("_fingerprint")
        if digest(a) != stored:
            raise _Corrupt("SHA-256 mismatch")
        if not valid(a):
            raise _Corrupt("unexpected arrays")
        return a
    except Exception as e:  # zip/CRC errors, truncation, missing keys, checksum: all mean "rebuild"
        if notify:
            why = str(e) if isinstance(e, _Corrupt) else f"unreadable: {type(e).__name__}"
            print(f"note: {what} cache {path} is corrupt ({why}); rebuilding it", file=sys.stderr)
        _remove(path)
        return None


def save(path: Path, arrays: dict[str, np.ndarray], fingerprint: str, what: str, notify: bool = True) -> None:
    """Write atomically; caching is optional, so OS errors (read-only, disk full) only warn."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"_fingerprint": np.array(fingerprint), "_sha256": np.array(digest(arrays))}
        atomic_write(path, lambda f: np.savez(f, **arrays, **meta))  # a file object: np.savez adds no .npz
    except OSError as e:
        if notify:
            print(f"note: not caching the {what} ({e.strerror or e}: {e.filename or path})", file=sys.stderr)


def _remove(p: Path) -> None:
    try:
        p.unlink(missing_ok=True)
    except OSError:  # e.g. a read-only cache folder: nothing to clean up there anyway
        pass
