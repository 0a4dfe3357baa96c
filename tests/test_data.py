import hashlib
import io
import os
import pickle
import tarfile
import time
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab import CLASSES
from cifarlab.data import CIFAR10_URL, Cifar10, class_balanced_subset, load_cifar10, resolve_data_source
from cifarlab.data import cifar
from cifarlab.data.safe_pickle import safe_load, safe_loads
from cifarlab.errors import UserError

from testdata import REAL_TARBALL, skip_if_missing

N = 20  # images per fake batch


def load(data, tmp_path, **kw):
    return load_cifar10(data, cache_dir=tmp_path / "cache", progress=False, **kw)


# ---------------------------------------------------------------- fixtures: official batch layout

def batch_rows(b: int) -> np.ndarray:
    rows = np.random.default_rng(b).integers(0, 256, (N, 3072), dtype=np.uint8)
    rows[0, 1 * 1024 + 5 * 32 + 7] = 201  # known pixel: channel G, row 5, column 7
    return rows


def batch_labels(b: int) -> list[int]:
    return [(i + b) % 10 for i in range(N)]


def write_batches(folder, str_keys=False, meta=True):
    folder.mkdir(parents=True)
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    for b, name in enumerate(cifar.BATCHES):
        d = {key("batch_label"): b"training batch", key("labels"): batch_labels(b),
             key("data"): batch_rows(b), key("filenames"): [b"x_%d.png" % i for i in range(N)]}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    if meta:
        m = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": N}
        (folder / "batches.meta").write_bytes(pickle.dumps(m, protocol=2))
    (folder / "readme.html").write_text("<html/>")
    return folder


@pytest.fixture
def batches_dir(tmp_path):
    return write_batches(tmp_path / "src" / "cifar-10-batches-py")


@pytest.fixture
def batches_tgz(tmp_path, batches_dir):
    out = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        tf.add(batches_dir, arcname="cifar-10-batches-py")
    return out


def check_batches(d: Cifar10):
    assert d.train_x.shape == (5 * N, 3, 32, 32) and d.val_x.shape == (N, 3, 32, 32)
    assert d.train_x.dtype == d.val_x.dtype == torch.uint8
    assert d.train_y.dtype == d.val_y.dtype == torch.int64
    assert d.train_x.is_contiguous() and d.val_x.is_contiguous()
    assert d.classes == CLASSES
    assert d.train_x[0, 1, 5, 7] == 201 and d.train_x[N, 1, 5, 7] == 201 and d.val_x[0, 1, 5, 7] == 201
    assert torch.equal(d.train_x[N:2 * N], torch.from_numpy(batch_rows(1)).view(N, 3, 32, 32))
    assert torch.equal(d.val_x, torch.from_numpy(batch_rows(5)).view(N, 3, 32, 32))
    assert d.train_y.tolist() == sum((batch_labels(b) for b in range(5)), [])
    assert d.val_y.tolist() == batch_labels(5)


def test_official_tarball(tmp_path, batches_tgz):
    d = load(batches_tgz, tmp_path)
    check_batches(d)
    assert str(batches_tgz) in d.source


@pytest.mark.parametrize("level", ["batches", "parent"])
def test_batches_folder(tmp_path, batches_dir, level):
    check_batches(load(batches_dir if level == "batches" else batches_dir.parent, tmp_path))


def test_batches_with_str_keys(tmp_path):
    check_batches(load(write_batches(tmp_path / "b", str_keys=True, meta=False), tmp_path))


# ---------------------------------------------------------------- fixtures: image-folder trees

def pixel(split: str, c: int, i: int) -> tuple[int, int, int]:
    return (c * 20 + (split == "test"), i, 7)


def write_tree(root, n_train=2, n_test=1):
    for split, n in (("train", n_train), ("test", n_test)):
        for c, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (32, 32), pixel(split, c, i)).save(root / split / cls / f"{i:04d}.png")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"junk")  # hidden: ignored
    return root


def check_tree(d: Cifar10, n_train=2, n_test=1):
    assert d.train_x.shape == (10 * n_train, 3, 32, 32) and d.val_x.shape == (10 * n_test, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert d.train_x.is_contiguous()
    assert d.train_y.tolist() == [c for c in range(10) for _ in range(n_train)]
    assert d.val_y.tolist() == [c for c in range(10) for _ in range(n_test)]
    for k in range(len(d.train_y)):  # class order, then sorted file names
        c, i = divmod(k, n_train)
        assert d.train_x[k, :, 3, 4].tolist() == list(pixel("train", c, i))
    assert d.val_x[3, :, 0, 0].tolist() == list(pixel("test", 3, 0))


def archive(src, out, top=None):
    """Pack the tree under src into out (.zip/.tar/.tar.gz), optionally under one top-level folder."""
    files = sorted(p for p in src.rglob("*"))
    arc = lambda p: (f"{top}/" if top else "") + p.relative_to(src).as_posix()
    if out.suffix == ".zip":
        with zipfile.ZipFile(out, "w") as zf:
            for p in files:
                zf.write(p, arc(p))
    else:
        with tarfile.open(out, "w:gz" if out.name.endswith("gz") else "w") as tf:
            for p in files:
                tf.add(p, arc(p), recursive=False)
    return out


@pytest.mark.parametrize("form", ["folder", "folder_one_down", "zip", "tar", "tgz_top", "zip_top"])
def test_image_tree(tmp_path, form):
    tree = write_tree(tmp_path / "tree")
    src = {
        "folder": lambda: tree,
        "folder_one_down": lambda: write_tree(tmp_path / "outer" / "cifar10") and tmp_path / "outer",
        "zip": lambda: archive(tree, tmp_path / "t.zip"),
        "tar": lambda: archive(tree, tmp_path / "t.tar"),
        "tgz_top": lambda: archive(tree, tmp_path / "t.tgz", top="cifar10"),
        "zip_top": lambda: archive(tree, tmp_path / "t.zip", top="cifar10"),
    }[form]()
    check_tree(load(src, tmp_path))


def test_tree_sorts_names_converts_and_resizes(tmp_path):
    root = write_tree(tmp_path / "tree", n_train=1)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "train" / "dog" / "a.png")  # sorted after 0000.png
    Image.new("L", (32, 32), 77).save(root / "train" / "dog" / "b.png")  # greyscale -> RGB
    Image.new("RGB", (48, 40), (50, 60, 70)).save(root / "train" / "cat" / "big.png")  # resized
    d = load(root, tmp_path)
    dog = (d.train_y == 5).nonzero().flatten()
    assert d.train_x[dog[1], :, 0, 0].tolist() == [9, 9, 9]
    assert d.train_x[dog[2], :, 0, 0].tolist() == [77, 77, 77]
    cat = (d.train_y == 3).nonzero().flatten()
    assert d.train_x[cat[1], :, 10, 10].tolist() == [50, 60, 70] and d.train_x.shape[1:] == (3, 32, 32)


# ---------------------------------------------------------------- bad input -> one-line UserError

def raises_user_error(data, tmp_path, *needles):
    with pytest.raises(UserError) as e:
        load(data, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    for s in needles:
        assert str(s) in msg, msg
    return msg


def test_missing_path(tmp_path):
    raises_user_error(tmp_path / "nope.tar.gz", tmp_path, tmp_path / "nope.tar.gz", "no such file")


def test_truncated_tarball(tmp_path, batches_tgz):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(batches_tgz.read_bytes()[: batches_tgz.stat().st_size // 2])
    raises_user_error(bad, tmp_path, bad)


def test_random_bytes_zip(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(os.urandom(5000))
    raises_user_error(bad, tmp_path, bad, "corrupt")


def test_unknown_file_type(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    raises_user_error(f, tmp_path, f, "unknown file type")


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "stuff" / "a").mkdir(parents=True)
    (tmp_path / "stuff" / "b.txt").write_text("x")
    raises_user_error(tmp_path / "stuff", tmp_path, tmp_path / "stuff", "not a CIFAR-10 dataset")


def test_class_folders_must_match(tmp_path):
    root = write_tree(tmp_path / "tree")
    (root / "test" / "truck").rename(root / "test" / "trucks")
    raises_user_error(root, tmp_path, root, "test/", "missing truck", "unexpected trucks")


def test_undecodable_image_is_skipped_and_reported(tmp_path, capsys):
    root = write_tree(tmp_path / "tree")
    (root / "train" / "frog" / "0001.png").write_bytes(b"not a png")
    z = archive(root, tmp_path / "t.zip")
    for src in (root, z):
        d = load(src, tmp_path)
        assert len(d.train_y) == 19 and (d.train_y == CLASSES.index("frog")).sum() == 1
        assert "skipped 1 unreadable files" in capsys.readouterr().err
    for p in (root / "train" / "frog").iterdir():  # a class left with nothing readable is an error
        p.write_bytes(b"not a png")
    raises_user_error(root, tmp_path, "train/frog/", "no readable images")


def test_empty_class_folder(tmp_path):
    root = write_tree(tmp_path / "tree")
    for p in (root / "train" / "ship").iterdir():
        p.unlink()
    raises_user_error(root, tmp_path, "train/ship/", "no images")


@pytest.mark.parametrize("payload, needle", [
    ({b"labels": [0] * N}, "'data'"),
    ({b"data": np.zeros((N, 3072), np.uint8)}, "'labels'"),
    ({b"data": np.zeros((N, 1024), np.uint8), b"labels": [0] * N}, "(N, 3072)"),
    ({b"data": np.zeros((N, 3072), np.float32), b"labels": [0] * N}, "uint8"),
    ({b"data": np.zeros((N, 3072), np.uint8), b"labels": [0] * (N - 1)}, "'labels'"),
    ({b"data": np.zeros((N, 3072), np.uint8), b"labels": [10] * N}, "0..9"),
    ([1, 2, 3], "dict"),
])
def test_bad_batch_contents(tmp_path, batches_dir, payload, needle):
    (batches_dir / "data_batch_3").write_bytes(pickle.dumps(payload, protocol=2))
    raises_user_error(batches_dir, tmp_path, batches_dir, "data_batch_3", needle)


def test_missing_batch_and_garbage_batch(tmp_path, batches_dir):
    (batches_dir / "test_batch").write_bytes(b"\x80\x02garbage")
    raises_user_error(batches_dir, tmp_path, "test_batch", "not a readable")
    (batches_dir / "test_batch").unlink()
    raises_user_error(batches_dir, tmp_path, "missing test_batch")


def test_wrong_label_names(tmp_path, batches_dir):
    m = {b"label_names": [b"apple"] * 10}
    (batches_dir / "batches.meta").write_bytes(pickle.dumps(m, protocol=2))
    raises_user_error(batches_dir, tmp_path, "batches.meta", "apple")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path, batches_dir):
    marker = tmp_path / "PWNED"
    (batches_dir / "data_batch_2").write_bytes(pickle.dumps({b"data": Evil(marker), b"labels": []}, protocol=2))
    msg = raises_user_error(batches_dir, tmp_path, batches_dir, "data_batch_2", "forbidden global", "system")
    assert not marker.exists()
    # and inside the official tarball
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tf:
        tf.add(batches_dir, arcname="cifar-10-batches-py")
    raises_user_error(tmp_path / "evil.tar.gz", tmp_path, "evil.tar.gz", "data_batch_2", "forbidden global")
    assert not marker.exists() and "refused to unpickle" in msg


def test_safe_pickle_round_trips_plain_data():
    x = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072) % 251
    for proto in (2, 4, 5):
        assert np.array_equal(safe_loads(pickle.dumps(x, protocol=proto)), x)
    d = {b"labels": [1, 2, 3], b"data": x, b"name": b"batch", "s": "str", "f": 1.5, "n": np.int64(4)}
    out = safe_load(io.BytesIO(pickle.dumps(d, protocol=2)))
    assert out[b"labels"] == [1, 2, 3] and out[b"name"] == b"batch" and out["s"] == "str" and out["n"] == 4
    assert np.array_equal(out[b"data"], x)
    # as written by python2 + numpy 1.x (the real CIFAR-10 files): str opcodes, numpy.core globals
    py2 = (b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00"
           b"\x85U\x01b\x87Rq\x04(K\x01K\x03\x85cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNN"
           b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x03\x01\x02\x03tbU\x06labels]q\x07(K\x01K\x02eu.")
    out = safe_loads(py2)
    assert out[b"data"].tolist() == [1, 2, 3] and out[b"data"].dtype == np.uint8 and out[b"labels"] == [1, 2]
    with pytest.raises(pickle.UnpicklingError, match="forbidden global builtins.exec"):
        safe_loads(pickle.dumps(exec))


# ---------------------------------------------------------------- cache

def test_second_load_uses_cache(tmp_path, batches_tgz, monkeypatch, capsys):
    monkeypatch.setattr(cifar, "ANNOUNCE_BYTES", 0)  # announce even this small a decode
    before = sorted(os.listdir(batches_tgz.parent / "src"))
    d1 = load_cifar10(batches_tgz, cache_dir=tmp_path / "cache")
    err = capsys.readouterr().err
    assert "decoding CIFAR-10 from" in err and f"decoded {6 * N} images" in err
    files = list((tmp_path / "cache" / "decoded").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # and no .part left behind
    assert sorted(os.listdir(batches_tgz.parent / "src")) == before  # nothing written next to the data

    monkeypatch.setattr(cifar, "_decode", lambda *a: pytest.fail("decoded again"))
    d2 = load_cifar10(batches_tgz, cache_dir=tmp_path / "cache")
    assert capsys.readouterr().err == ""
    for k in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(d1, k), getattr(d2, k))
    assert d2.source == d1.source and d2.train_x.is_contiguous()


def test_folder_cache_invalidated_by_change(tmp_path):
    root = write_tree(tmp_path / "tree")
    load(root, tmp_path)
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "train" / "cat" / "0000.png")
    os.utime(root / "train" / "cat" / "0000.png", ns=(1, 1))  # a new mtime even on coarse clocks
    d = load(root, tmp_path)
    assert d.train_x[6, :, 0, 0].tolist() == [1, 2, 3]
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 1  # one file per source, overwritten


def test_corrupt_cache_is_rebuilt(tmp_path, batches_tgz):
    load(batches_tgz, tmp_path)
    (npz,) = (tmp_path / "cache" / "decoded").iterdir()
    npz.write_bytes(npz.read_bytes()[:1000])
    check_batches(load(batches_tgz, tmp_path))
    with np.load(npz) as z:
        assert z["train_x"].shape == (5 * N, 3, 32, 32)


def test_unwritable_cache_is_skipped(tmp_path, batches_dir):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    check_batches(load(batches_dir, tmp_path))


def test_interrupted_cache_write_leaves_no_part(tmp_path, batches_dir, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        load(batches_dir, tmp_path)
    assert list((tmp_path / "cache" / "decoded").iterdir()) == []


# ---------------------------------------------------------------- resolution and download

def test_resolve_data_source(tmp_path, monkeypatch):
    assert resolve_data_source(tmp_path / "x") == tmp_path / "x"
    assert resolve_data_source(None, tmp_path / "c") == tmp_path / "c" / "cifar-10-python.tar.gz"
    monkeypatch.setenv("CIFARLAB_HOME", str(tmp_path / "home"))
    assert resolve_data_source() == tmp_path / "home" / "cifar-10-python.tar.gz"
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "d"))
    assert resolve_data_source() == tmp_path / "d"


def test_env_var_source(tmp_path, batches_dir, monkeypatch):
    monkeypatch.setenv("CIFARLAB_DATA", str(batches_dir))
    check_batches(load(None, tmp_path))
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "gone"))
    raises_user_error(None, tmp_path, "gone", "CIFARLAB_DATA")


def serve(monkeypatch, payload=None, error=None):
    def urlopen(url, timeout=None):
        assert url == CIFAR10_URL
        if error:
            raise error
        return io.BytesIO(payload)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_download_ok(tmp_path, monkeypatch):
    serve(monkeypatch, b"x" * 3_000_000)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(b"x" * 3_000_000).hexdigest())
    out = cifar.download_cifar10(tmp_path / "dl", progress=False)
    assert out == tmp_path / "dl" / "cifar-10-python.tar.gz" and out.read_bytes() == b"x" * 3_000_000
    assert os.listdir(tmp_path / "dl") == ["cifar-10-python.tar.gz"]


def test_download_bad_md5(tmp_path, monkeypatch):
    serve(monkeypatch, b"truncated")
    with pytest.raises(UserError, match="MD5"):
        cifar.download_cifar10(tmp_path / "dl", progress=False)
    assert os.listdir(tmp_path / "dl") == []


def test_download_offline(tmp_path, monkeypatch):
    serve(monkeypatch, error=urllib.error.URLError("Name or service not known"))
    with pytest.raises(UserError, match="cannot download CIFAR-10 .*--data") as e:
        load(None, tmp_path)
    assert "Name or service not known" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "cache" / "cifar-10-python.tar.gz.part").exists()
    serve(monkeypatch, error=TimeoutError("timed out"))
    with pytest.raises(UserError, match="timed out"):
        load(None, tmp_path)


def test_download_interrupted(tmp_path, monkeypatch):
    class Stream(io.BytesIO):
        def read(self, n=-1):
            if self.tell():
                raise KeyboardInterrupt
            return super().read(10)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Stream(b"y" * 100))
    with pytest.raises(KeyboardInterrupt):
        cifar.download_cifar10(tmp_path / "dl", progress=False)
    assert os.listdir(tmp_path / "dl") == []


def test_no_data_and_no_download(tmp_path):
    with pytest.raises(UserError, match="download is off.*--data"):
        load(None, tmp_path, download=False)


def test_download_then_load(tmp_path, monkeypatch, batches_tgz):
    payload = batches_tgz.read_bytes()
    serve(monkeypatch, payload)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    check_batches(load(None, tmp_path))
    assert (tmp_path / "cache" / "cifar-10-python.tar.gz").read_bytes() == payload
    serve(monkeypatch, error=AssertionError("must not download twice"))
    check_batches(load(None, tmp_path))


# ---------------------------------------------------------------- class_balanced_subset

def test_class_balanced_subset():
    y = torch.arange(1000) % 10
    idx = class_balanced_subset(y, 103, seed=1)
    assert len(idx) == 103 and len(set(idx.tolist())) == 103 and torch.equal(idx, idx.sort().values)
    assert torch.bincount(y[idx], minlength=10).tolist() == [11, 11, 11] + [10] * 7
    assert torch.equal(idx, class_balanced_subset(y, 103, seed=1))
    assert not torch.equal(idx, class_balanced_subset(y, 103, seed=2))
    assert torch.equal(class_balanced_subset(y, 5000), torch.arange(1000))
    with pytest.raises(UserError, match="--train-subset must be positive"):
        class_balanced_subset(y, 0)


def test_class_balanced_subset_short_class():
    y = torch.cat([torch.zeros(3, dtype=torch.long), torch.arange(1, 10).repeat(20)])
    counts = torch.bincount(y[class_balanced_subset(y, 50)], minlength=10).tolist()
    assert counts[0] == 3 and sum(counts) == 50 and max(counts) - min(counts[1:]) <= 1


# ---------------------------------------------------------------- the real data

@pytest.mark.slow
def test_real_cifar10_jpeg(real_cifar, real_cifar_cache, monkeypatch):
    skip_if_missing(REAL_TARBALL)
    d = real_cifar
    assert d.train_x.shape == (50000, 3, 32, 32) and d.val_x.shape == (10000, 3, 32, 32)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.int64
    assert torch.bincount(d.train_y).tolist() == [5000] * 10
    assert d.val_y.tolist() == [c for c in range(10) for _ in range(1000)]
    mean = (d.train_x.float() / 255).mean((0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.02), mean

    # the session fixture cached it: a second load must come from the cache, not decode again
    monkeypatch.setattr(cifar, "_decode", lambda *a: pytest.fail("decoded again"))
    t0 = time.time()
    d2 = load_cifar10(REAL_TARBALL, cache_dir=real_cifar_cache, progress=False)
    print(f"second (cached) load of {REAL_TARBALL.name}: {time.time() - t0:.2f} s")
    assert torch.equal(d2.val_y, d.val_y) and torch.equal(d2.train_x[::997], d.train_x[::997])
