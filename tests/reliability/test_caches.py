"""4. Caches that cannot lie: a corrupt, truncated or tampered cache file is detected (SHA-256 over its
arrays) and rebuilt with a one-line notice; a changed source invalidates its cache."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab.data import load_cifar10
from cifarlab.data.testset import load_testset
from cifarlab.io import STALE_PART_AGE, sweep_stale_parts
from testdata import write_tree


@pytest.fixture(autouse=True)
def announce_every_decode(monkeypatch):
    """These tests tell a decode from a cache hit by the "decoding" note, which small sources skip."""
    from cifarlab.data import cifar as cifar_module

    monkeypatch.setattr(cifar_module, "ANNOUNCE_BYTES", 0)


def cifar(tree, cache):
    return load_cifar10(tree, cache_dir=cache, progress=True)


def only_cache(folder):
    files = list(folder.glob("*.npz"))
    assert len(files) == 1, files
    return files[0]


def tamper(path):
    """Rewrite a valid npz with one pixel changed but the stored checksum kept: only the SHA-256 can tell."""
    with np.load(path) as z:
        a = {k: z[k] for k in z.files}
    key = "train_x" if "train_x" in a else "x"
    a[key] = a[key].copy()
    a[key].flat[0] ^= 0xFF
    np.savez(open(path, "wb"), **a)


@pytest.mark.parametrize("damage", ["flip", "truncate", "tamper", "empty"])
def test_damaged_cifar_cache_is_detected_and_rebuilt(tmp_path, capsys, damage):
    tree, cache = write_tree(tmp_path / "tree", n_train=2, n_test=1), tmp_path / "cache"
    good = cifar(tree, cache)
    f = only_cache(cache / "decoded")
    data = f.read_bytes()
    {"flip": lambda: f.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1:]),
     "truncate": lambda: f.write_bytes(data[: len(data) * 2 // 3]),
     "tamper": lambda: tamper(f),
     "empty": lambda: f.write_bytes(b"")}[damage]()
    capsys.readouterr()
    again = cifar(tree, cache)
    err = capsys.readouterr().err
    assert "cache" in err and "is corrupt" in err and "rebuilding" in err, err
    assert torch.equal(again.train_x, good.train_x) and torch.equal(again.val_y, good.val_y)
    cifar(tree, cache)
    assert "decoding" not in capsys.readouterr().err  # the rebuilt cache is used


def test_changed_source_invalidates_the_cache(tmp_path, capsys):
    tree, cache = write_tree(tmp_path / "tree", n_train=2, n_test=1), tmp_path / "cache"
    cifar(tree, cache)
    first = tree / "train" / "airplane" / "0.png"
    st = first.stat()
    replacement = tmp_path / "new.png"  # same size and mtime, but a different file (inode): still noticed
    Image.new("RGB", (32, 32), (1, 2, 3)).save(replacement)
    replacement.write_bytes(replacement.read_bytes().ljust(st.st_size, b"\0")[: st.st_size]) \
        if replacement.stat().st_size <= st.st_size else None
    os.replace(replacement, first)
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    capsys.readouterr()
    d = cifar(tree, cache)
    assert "decoding" in capsys.readouterr().err
    assert d.train_x[0, :, 0, 0].tolist() == [1, 2, 3]
    only_cache(cache / "decoded")  # rebuilt in place, not piled up


def test_damaged_testset_cache_is_rebuilt(tmp_path, capsys):
    root = tmp_path / "photos"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "cat" / "a.png")
    good = load_testset(root, cache_dir=tmp_path / "cache")
    f = only_cache(tmp_path / "cache" / "testsets")
    tamper(f)
    capsys.readouterr()
    again = load_testset(root, cache_dir=tmp_path / "cache")
    assert "SHA-256 mismatch" in capsys.readouterr().err and torch.equal(again.x, good.x)
    Image.new("RGB", (40, 30), (10, 200, 10)).save(root / "cat" / "a.png")
    assert load_testset(root, cache_dir=tmp_path / "cache").x[0, 1, 16, 16] > 150  # the new photo, not the cache


def dead_pid() -> int:
    """The PID of a child that has exited and been reaped (so no live process has it, barring reuse)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_part_files_are_swept_from_the_cache_but_not_a_live_writers(tmp_path):
    tree, cache = write_tree(tmp_path / "tree", n_train=2, n_test=1), tmp_path / "cache"
    cifar(tree, cache)
    decoded = cache / "decoded"
    dead = decoded / f".abc.npz.{dead_pid()}.part"
    live = decoded / f".abc.npz.{os.getpid()}.part"  # this process is alive: as a writer mid-write
    fresh = decoded / f".def.npz.{dead_pid()}.part"  # dead PID but written a moment ago
    for f in (dead, live, fresh):
        f.write_bytes(b"half")
    hour_ago = time.time() - 2 * STALE_PART_AGE
    os.utime(dead, (hour_ago, hour_ago))
    os.utime(live, (hour_ago, hour_ago))
    cifar(tree, cache)  # a cache read sweeps
    assert not dead.exists() and live.exists() and fresh.exists()


def test_sweep_rule(tmp_path):
    old = time.time() - 2 * STALE_PART_AGE
    names = {"dead": f".w.h5.{dead_pid()}.part", "mine": f".w.h5.{os.getpid()}.part",
             "not_a_part": "w.h5", "no_pid": ".w.h5.part"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (old, old))
    dead_dir = tmp_path / f".export.{dead_pid()}.part"  # atomic_write_folder's half-made folder
    (dead_dir / "sub").mkdir(parents=True)
    (dead_dir / "sub" / "model.safetensors").write_bytes(b"half")
    os.utime(dead_dir, (old, old))
    assert sorted(sweep_stale_parts(tmp_path)) == sorted([tmp_path / names["dead"], dead_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "dead")
    assert sweep_stale_parts(tmp_path / "missing") == []


def test_a_folder_write_killed_midway_is_repaired_by_the_next(tmp_path):
    from cifarlab.io import atomic_write_folder

    old = time.time() - 2 * STALE_PART_AGE
    out = tmp_path / "export"
    atomic_write_folder(out, {"a": b"1"})
    # killed -9 between its two renames: the previous export exists only as .export.PID.old, and a
    # half-made .part folder lies beside it
    pid = dead_pid()
    os.replace(out, tmp_path / f".export.{pid}.old")
    (tmp_path / f".export.{pid}.part").mkdir()
    for leftover in tmp_path.iterdir():
        os.utime(leftover, (old, old))
    with pytest.raises(TypeError):  # the next write fails too (a file it cannot write): the old export is back
        atomic_write_folder(out, {"a": b"2", "b": None})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and (out / "a").read_bytes() == b"1"
    atomic_write_folder(out, {"a": b"2"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and (out / "a").read_bytes() == b"2"


def test_a_run_directory_sweeps_dead_writers_parts_at_once(tmp_path):
    from cifarlab.train.runctl import RunControl

    dead, live = tmp_path / f".last.pt.{dead_pid()}.part", tmp_path / f".metrics.json.{os.getpid()}.part"
    dead.write_bytes(b"half")
    live.write_bytes(b"half")  # e.g. `cifarlab evaluate` of this run, mid-write, in this process
    ctl = RunControl(tmp_path)
    ctl.make_run_dir(tmp_path)  # holds the lock: no age needed
    ctl.lock.release()
    assert not dead.exists() and live.exists()
