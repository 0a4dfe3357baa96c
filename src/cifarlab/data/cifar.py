"""CIFAR-10 loading: official python batches or train/test image folders, decoded once and cached.

Sources (file or folder, archives read in memory, never extracted next to the data):
  cifar-10-python.tar.gz, cifar-10-batches-py/, or a folder holding it;
  train/<class>/*, test/<class>/* image trees, as a folder or a .tar/.tar.gz/.tgz/.zip,
  possibly one folder down.
The decoded uint8 arrays are cached as <cache_dir>/decoded/<key>.npz, so a second start is fast; the
cache is checked against the source's sizes, mtimes and inodes and a SHA-256 of its arrays, and rebuilt
when either differs. Unreadable images in a tree are skipped and listed, never fatal.
"""

import hashlib
import os
import pickle
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from cifarlab import CLASSES
from cifarlab.data import npzcache
from cifarlab.data.images import UnreadablePhoto, decode_image, load_photo
from cifarlab.data.safe_pickle import ForbiddenGlobal, safe_loads
from cifarlab.errors import UserError
from cifarlab.io import download

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL = "cifar-10-python.tar.gz"
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
_CACHE_VERSION = 2  # bump when the decoded layout changes
ANNOUNCE_BYTES = 5_000_000  # sources this large take seconds to decode: say so before and after
ARCHIVE_MEMBER_MAX = 512 << 20  # archives are read in memory: cap what a hostile one can claim
ARCHIVE_TOTAL_MAX = 2 << 30
_DATA_HINT = ("pass --data PATH (cifar-10-python.tar.gz, cifar-10-batches-py/, "
              "or a train/test image-folder tree or archive) or set CIFARLAB_DATA")
# what bad input can raise while we read it; turned into a one-line UserError
_BAD_INPUT = (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, pickle.UnpicklingError,
              ValueError, KeyError, zlib.error)


@dataclass
class Cifar10:
    train_x: torch.Tensor  # uint8 (N, 3, 32, 32), contiguous
    train_y: torch.Tensor  # int64 (N,)
    val_x: torch.Tensor  # uint8, the CIFAR-10 *test* split, used as validation (as in the study)
    val_y: torch.Tensor
    classes: tuple[str, ...]  # always CLASSES
    source: str  # where it came from, for logs and run records


# ---------------------------------------------------------------- where the data is

def default_cache_dir() -> Path:
    return Path(os.environ.get("CIFARLAB_HOME") or Path.home() / ".cache" / "cifarlab").expanduser()


def resolve_data_source(data: str | os.PathLike | None = None, cache_dir: Path | None = None) -> Path:
    """The path load_cifar10 will read: data, else $CIFARLAB_DATA, else the cached official tarball
    (which may not exist yet; load_cifar10 downloads it). Does not check or load anything."""
    if data is None:
        data = os.environ.get("CIFARLAB_DATA") or None
    if data is not None:
        return Path(data).expanduser().absolute()
    return (Path(cache_dir) if cache_dir else default_cache_dir()).expanduser().absolute() / TARBALL


def download_cifar10(dest_dir: Path, progress: bool = True) -> Path:
    """Download the official tarball (163 MiB) into dest_dir, checking its MD5; returns the file's path."""
    return download(CIFAR10_URL, Path(dest_dir) / TARBALL, "CIFAR-10", _DATA_HINT, md5=CIFAR10_MD5, progress=progress)


# ---------------------------------------------------------------- public loader

def load_cifar10(data: str | os.PathLike | None = None, cache_dir: Path | None = None,
                 download: bool = True, progress: bool = True) -> Cifar10:
    """Load CIFAR-10 from data (see module doc), $CIFARLAB_DATA, or the cache (downloading if allowed)."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = resolve_data_source(data, cache_dir)
    if not path.exists():
        if data is not None or os.environ.get("CIFARLAB_DATA"):
            raise UserError(f"{path}: no such file or folder" + ("" if data else " (from $CIFARLAB_DATA)"))
        if not download:
            raise UserError(f"{path}: CIFAR-10 not found and download is off; {_DATA_HINT}")
        path = download_cifar10(path.parent, progress)

    listing = _list_folder(path) if path.is_dir() else None  # folders: find the files to key on
    name, fingerprint, nbytes = _cache_key(path, listing)
    cache = cache_dir / "decoded" / f"{name}.npz"
    arrays = npzcache.load(cache, fingerprint, _valid, "decoded CIFAR-10", progress)
    if arrays is None:
        t0 = time.time()
        # only a decode long enough to wonder about is announced: a small source stays quiet, so a
        # command that then fails on it (or on anything after it) prints its one error line alone
        announce = progress and nbytes >= ANNOUNCE_BYTES
        if announce:
            print(f"decoding CIFAR-10 from {path} (once; cached as {cache})", file=sys.stderr)
        arrays = _decode(path, listing)
        npzcache.save(cache, arrays, fingerprint, "decoded CIFAR-10", progress)
        if announce:
            n = len(arrays["train_y"]) + len(arrays["val_y"])
            print(f"decoded {n} images in {time.time() - t0:.1f} s", file=sys.stderr)
    t = {k: torch.from_numpy(arrays[k]) for k in ("train_x", "train_y", "val_x", "val_y")}
    kind = {"batches": "python batches", "tree": "image folders"}[str(arrays["kind"])]
    return Cifar10(**t, classes=CLASSES, source=f"{path} ({kind})")


def class_balanced_subset(y: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of n examples, as equal a count per class as possible (remainder to the
    first classes; a class short of examples gives its share to the others)."""
    if n <= 0:
        raise UserError("--train-subset must be positive")
    if n >= len(y):
        return torch.arange(len(y))
    avail = torch.bincount(y, minlength=len(CLASSES)).tolist()
    take, left = [0] * len(avail), n
    while left > 0:  # water-filling: split what is left among classes that still have examples
        open_ = [k for k in range(len(avail)) if take[k] < avail[k]]
        share, extra = divmod(left, len(open_))
        for i, k in enumerate(open_):
            add = min(share + (i < extra), avail[k] - take[k])
            take[k] += add
            left -= add
    g = torch.Generator().manual_seed(seed)
    picks = []
    for k, m in enumerate(take):
        idx = (y == k).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:m]])
    return torch.cat(picks).sort().values


# ---------------------------------------------------------------- finding the dataset's root

def _visible(parts: tuple[str, ...]) -> bool:
    # skip hidden files and macOS zip litter
    return all(p and not p.startswith(".") and p != "__MACOSX" for p in parts)


def _find_root(names: set[str], where: Path) -> tuple[str, str]:
    """(kind, prefix): 'batches' or 'tree', at the top or one folder down. Folders end in '/'."""
    def kind(p: str) -> str | None:
        if p + "data_batch_1" in names:
            return "batches"
        if p + "train/" in names and p + "test/" in names:
            return "tree"
        return None

    if k := kind(""):
        return k, ""
    found = [(kind(top), top) for top in sorted(n for n in names if n.count("/") == 1 and n.endswith("/"))]
    found = [(k, top) for k, top in found if k]
    if len(found) > 1:
        raise UserError(f"{where}: several datasets inside ({', '.join(t for _, t in found)}); point --data at one")
    if found:
        return found[0]
    raise UserError(f"{where}: not a CIFAR-10 dataset: expected cifar-10-batches-py/ files "
                    f"(data_batch_1..5, test_batch) or train/<class>/ and test/<class>/ image folders")


def _list_folder(path: Path) -> tuple[str, dict[str, Path]]:
    """Find the dataset in a folder and list the files to read, relative to its root."""
    names = set()
    for top in _scandir(path):  # two levels are enough to find the root
        if top.is_dir():
            names.add(top.name + "/")
            names.update(f"{top.name}/{e.name}" + "/" * e.is_dir() for e in _scandir(Path(top.path)))
        else:
            names.add(top.name)
    kind, prefix = _find_root(names, path)
    root = path / prefix
    if kind == "batches":
        return kind, {n: root / n for n in BATCHES + ["batches.meta"] if (root / n).is_file()}
    files: dict[str, Path | None] = {}
    for split in ("train", "test"):
        _walk(root / split, split, files, frozenset())
    return kind, files


def _walk(folder: Path, rel: str, files: dict[str, Path | None], above: frozenset[tuple[int, int]]) -> None:
    """Visible entries under folder, following symlinked folders but never into a loop (a folder that is
    its own ancestor). Folders are kept (so an empty class folder is reported); files that are not
    images are reported at decoding."""
    try:
        st = folder.stat()
    except OSError:
        return
    if (st.st_dev, st.st_ino) in above:  # a symlink back up the tree
        return
    above = above | {(st.st_dev, st.st_ino)}
    files[rel + "/"] = None
    for e in _scandir(folder):
        try:
            is_dir = e.is_dir()  # follows symlinks; a symlink loop raises
        except OSError:
            is_dir = False
        if is_dir:
            _walk(Path(e.path), f"{rel}/{e.name}", files, above)
        else:
            files[f"{rel}/{e.name}"] = Path(e.path)


def _scandir(path: Path) -> list[os.DirEntry]:
    try:
        return [e for e in os.scandir(path) if _visible((e.name,))]
    except OSError as e:
        raise UserError(f"{path}: cannot read folder ({e.strerror or e})") from None


def _read_archive(path: Path) -> dict[str, bytes]:
    """All visible files of a .tar(.gz) or .zip, in memory, by normalized name (folders end in '/')."""
    files: dict[str, bytes] = {}
    total = 0

    def check_size(name: str, size: int) -> None:  # a zip/tar bomb is refused before it is read
        nonlocal total
        total += size
        if size > ARCHIVE_MEMBER_MAX or total > ARCHIVE_TOTAL_MAX:
            raise UserError(f"{path}: {name} would take the archive over {ARCHIVE_TOTAL_MAX >> 20} MiB in memory "
                            f"(or {ARCHIVE_MEMBER_MAX >> 20} MiB for one file); extract it and pass the folder")

    def add(name: str, data: bytes | None):
        parts = tuple(p for p in PurePosixPath(name).parts if p not in ("/", "."))
        if parts and _visible(parts) and ".." not in parts:
            for i in range(1, len(parts)):
                files.setdefault("/".join(parts[:i]) + "/", None)
            files["/".join(parts) + ("/" if data is None else "")] = data

    if path.name.lower().endswith(".zip") and not zipfile.is_zipfile(path):
        raise UserError(f"{path}: unreadable or corrupt archive (not a valid zip file)")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    check_size(info.filename, info.file_size)
                    add(info.filename, None if info.is_dir() else zf.read(info))
        else:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:  # in order: reading a .tar.gz sequentially is fast
                    if m.isdir() or m.isfile():
                        check_size(m.name, m.size)
                        add(m.name, tf.extractfile(m).read() if m.isfile() else None)
    except _BAD_INPUT as e:
        raise UserError(f"{path}: unreadable or corrupt archive ({_why(e)})") from None
    return files


# ---------------------------------------------------------------- decoding

def _decode(path: Path, listing: tuple[str, dict] | None) -> dict[str, np.ndarray]:
    """Decode a source into uint8 NCHW arrays and int64 labels."""
    if listing is None:
        if not path.name.lower().endswith((".tar", ".tar.gz", ".tgz", ".zip")) \
                and not (zipfile.is_zipfile(path) or _is_tar(path)):
            raise UserError(f"{path}: unknown file type (expected a .tar.gz, .tar, .tgz or .zip, or a folder)")
        files = _read_archive(path)
        kind, prefix = _find_root(set(files), path)
        listing = kind, {n[len(prefix):]: b for n, b in files.items() if n.startswith(prefix) and n != prefix}
    kind, files = listing
    decode = _decode_batches if kind == "batches" else _decode_tree
    return {**decode(path, files), "kind": np.array(kind)}


def _why(e: BaseException) -> str:
    # messages must stay one line; some (tarfile's) span several
    first = str(e).strip().splitlines()[0].rstrip(":") if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except _BAD_INPUT:
        return False


def _read(v: bytes | Path) -> bytes:
    return v if isinstance(v, bytes) else v.read_bytes()


def _decode_batches(path: Path, files: dict[str, bytes | Path]) -> dict[str, np.ndarray]:
    missing = [n for n in BATCHES if n not in files]
    if missing:
        raise UserError(f"{path}: CIFAR-10 batches incomplete, missing {', '.join(missing)}")
    if "batches.meta" in files:
        names = _get(_unpickle(path, "batches.meta", files["batches.meta"]), "label_names", path, "batches.meta")
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        if names != CLASSES:
            raise UserError(f"{path}:batches.meta: label_names {list(names)} are not CIFAR-10's {list(CLASSES)}")
    xs, ys = [], []
    for name in BATCHES:
        x, y = _batch_arrays(path, name, _unpickle(path, name, files[name]))
        xs.append(x)
        ys.append(y)
    return {"train_x": np.concatenate(xs[:5]), "train_y": np.concatenate(ys[:5]), "val_x": xs[5], "val_y": ys[5]}


def _unpickle(path: Path, name: str, v: bytes | Path) -> object:
    try:
        return safe_loads(_read(v))
    except ForbiddenGlobal as e:
        raise UserError(f"{path}:{name}: refused to unpickle forbidden global {e.name!r} "
                        f"(batch files may only contain arrays and plain data)") from None
    except (*_BAD_INPUT, TypeError, AttributeError, MemoryError) as e:  # malformed pickles raise all sorts
        raise UserError(f"{path}:{name}: not a readable CIFAR-10 batch pickle ({_why(e)})") from None


def _get(d: object, key: str, path: Path, name: str) -> object:
    # the real files were pickled by python2: keys are bytes; accept str keys too
    if isinstance(d, dict):
        for k in (key.encode(), key):
            if k in d:
                return d[k]
    raise UserError(f"{path}:{name}: expected a dict with key '{key}'")


def _batch_arrays(path: Path, name: str, d: object) -> tuple[np.ndarray, np.ndarray]:
    x, y = _get(d, "data", path, name), _get(d, "labels", path, name)
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072):
        shape = getattr(x, "shape", type(x).__name__)
        raise UserError(f"{path}:{name}: 'data' must be a uint8 array of shape (N, 3072), got {shape}")
    try:
        y = np.asarray(y, dtype=np.int64)
    except (ValueError, TypeError):
        raise UserError(f"{path}:{name}: 'labels' must be a list of ints") from None
    if y.shape != (len(x),) or (y.size and (y.min() < 0 or y.max() >= len(CLASSES))):
        raise UserError(f"{path}:{name}: 'labels' must be {len(x)} ints in 0..9")
    # each row is 1024 R, 1024 G, 1024 B, row-major 32x32: already NCHW
    return np.ascontiguousarray(x.reshape(-1, 3, 32, 32)), y


def _decode_tree(path: Path, files: dict[str, bytes | Path | None]) -> dict[str, np.ndarray]:
    out, resized, skipped = {}, 0, []
    for split, key in (("train", "train"), ("test", "val")):
        classes = {n.split("/")[1] for n in files if n.startswith(split + "/") and n.count("/") >= 2}
        if classes != set(CLASSES):
            missing, extra = sorted(set(CLASSES) - classes), sorted(classes - set(CLASSES))
            raise UserError(f"{path}: {split}/ class folders must be exactly the ten CIFAR-10 classes"
                            + (f"; missing {', '.join(missing)}" if missing else "")
                            + (f"; unexpected {', '.join(extra)}" if extra else ""))
        xs, ys = [], []
        for c, cls in enumerate(CLASSES):
            names = sorted(n for n, v in files.items() if v is not None and n.startswith(f"{split}/{cls}/"))
            if not names:
                raise UserError(f"{path}: {split}/{cls}/ has no images")
            n_before = len(xs)
            for n in names:
                try:
                    x, r = _decode_image(n, files[n])
                except UnreadablePhoto as e:
                    skipped.append((n, e.reason))
                    continue
                xs.append(x)
                resized += r
            if len(xs) == n_before:
                raise UserError(f"{path}: {split}/{cls}/ has no readable images ({len(names)} unreadable, e.g. "
                                f"{skipped[-1][0]}: {skipped[-1][1]})")
            ys += [c] * (len(xs) - n_before)
        out[f"{key}_x"], out[f"{key}_y"] = np.ascontiguousarray(np.stack(xs)), np.array(ys, np.int64)
    if resized:
        print(f"note: resized {resized} images that were not 32x32 in {path}", file=sys.stderr)
    if skipped:
        shown = "; ".join(f"{n} ({why})" for n, why in skipped[:5])
        print(f"note: skipped {len(skipped)} unreadable files in {path}: {shown}"
              + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""), file=sys.stderr)
    return out


def _decode_image(name: str, v: bytes | Path) -> tuple[np.ndarray, bool]:
    """One image as uint8 (3, 32, 32) (and whether it was resized), or UnreadablePhoto."""
    img = decode_image(v, name) if isinstance(v, bytes) else load_photo(v)
    resized = img.size != (32, 32)
    if resized:  # friendlier than refusing; PIL's bilinear antialiases when shrinking
        img = img.resize((32, 32), Image.Resampling.BILINEAR)
    return np.asarray(img).transpose(2, 0, 1), resized


# ---------------------------------------------------------------- cache

def _cache_key(path: Path, listing: tuple[str, dict] | None) -> tuple[str, str, int]:
    """(file name, fingerprint, bytes to read). One cache file per source path; the fingerprint holds the
    size, mtime and inode of every file read (what changes when one is edited or replaced), never their
    contents."""
    name = hashlib.sha256(f"cifarlab-cache-v{_CACHE_VERSION}\0{path.resolve()}".encode()).hexdigest()[:32]
    h, nbytes = hashlib.sha256(name.encode()), 0
    files = {"": path} if listing is None else listing[1]
    for rel, p in sorted(files.items()):
        if p is not None:
            try:
                st = p.stat()
                h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode())
                nbytes += st.st_size
            except OSError:  # broken link, loop: decoding reports it
                h.update(f"\0{rel}\0?".encode())
    return name, h.hexdigest(), nbytes


def _valid(a: dict[str, np.ndarray]) -> bool:
    if str(a["kind"]) not in ("batches", "tree"):
        return False
    for s in ("train", "val"):
        x, y = a[f"{s}_x"], a[f"{s}_y"]
        if not (x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == (3, 32, 32)
                and y.dtype == np.int64 and y.shape == (len(x),)):
            return False
    return True
