"""Custom test sets: class folders of real photos, read the way the study prepared its web test set.

Layout: ROOT/<class>/<photo>, class folders named after (a subset of) the ten CIFAR-10 classes;
photos of any size and format Pillow reads (JPEG, PNG, GIF, BMP, WebP, TIFF, ...).

Each photo goes through one pipeline (`prepare_photo`):
  1. decode to RGB (`load_photo`): EXIF orientation applied, transparency composited on white,
     16-bit scaled to 8-bit, first frame of animations;
  2. the study's filter, if asked (`study_blur`): Gaussian blur at full resolution, kernel size
     s = round(w / 75) for a photo w pixels wide (after EXIF rotation, before any crop);
  3. fit to a square: centre crop (default), pad with the photo's mean colour, or stretch;
  4. resize to 32x32 with Lanczos (PIL's antialiasing filter: what `Image.ANTIALIAS` meant).
Models with a larger input upscale the 32x32 image themselves, exactly as in their training.

The prepared uint8 arrays are cached in $CIFARLAB_HOME/testsets/<key>.npz (key: root and options;
checked against every file's size, mtime and inode and a SHA-256 of the arrays), so repeated
evaluations skip the decoding. Decoding itself, and what bad files are skipped, is cifarlab.data.images.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageStat

from cifarlab import CLASSES
from cifarlab.data import npzcache
from cifarlab.data.cifar import default_cache_dir
from cifarlab.data.images import UnreadablePhoto, load_photo  # noqa: F401 (re-exported: the photo readers)
from cifarlab.errors import UserError

FITS = ("crop", "pad", "stretch")
BLUR_DIVISOR = 75  # the study: kernel size = photo width / 75
PAD_MAX_SIDE = 4096  # fit='pad' shrinks first beyond this, so the square canvas stays small
_CACHE_VERSION = 2  # bump when the pipeline's output changes
STRIP_FLOATS = 1 << 18  # blur strips: 1-2 MB of floats, 16x that as oneDNN's output; keep > 2 x 20480


# ---------------------------------------------------------------- the study's filter

def blur_kernel_size(width: int) -> int:
    """The study's s = round(w / 75) (w an integer, so w / 75 is never exactly half-way)."""
    return round(width / BLUR_DIVISOR)


def blur_sigma(ksize: int) -> float:
    """OpenCV's sigma for a kernel of ksize taps when sigma is not given (cv2.getGaussianKernel).
    We use it for every size. (cv2.GaussianBlur(img, (k, k), 0) itself swaps in fixed binomial
    taps for k <= 7, e.g. [1, 2, 1] / 4; they differ from these Gaussian taps by less than 0.025.)"""
    return 0.3 * ((ksize - 1) / 2 - 1) + 0.8


def blur_kernel_length(s: int) -> int:
    """The taps actually used for s: OpenCV accepts only odd kernel sizes, so an even s becomes s + 1,
    the kernel cv2.GaussianBlur would be called with; an even kernel would also shift the image by
    half a pixel. Sigma comes from this length, as OpenCV derives it from the ksize it is given."""
    return s if s % 2 else s + 1


def gaussian_taps(ksize: int, sigma: float) -> torch.Tensor:
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    return (g / g.sum()).float()


def study_blur(img: Image.Image, width: int | None = None) -> Image.Image:
    """The study's filter: an s x s Gaussian blur, s = round(width / 75) (default: the image's width),
    sigma by OpenCV's rule, borders reflected without repeating the edge (OpenCV's BORDER_REFLECT_101).
    s <= 1: the image unchanged."""
    s = blur_kernel_size(img.width if width is None else width)
    if s <= 1:
        return img
    k = blur_kernel_length(s)
    g = gaussian_taps(k, blur_sigma(k))
    a = np.array(img if img.mode == "RGB" else img.convert("RGB"))
    mid = torch.empty(a.shape[:2])  # the one full-size float plane, reused by each channel
    for c in range(3):
        _blur_plane(torch.from_numpy(a[:, :, c]), g, mid)
    del mid  # before the output image is made (both 200 MB at 50 MP)
    return Image.fromarray(a)


def _blur_plane(x: torch.Tensor, g: torch.Tensor, mid: torch.Tensor) -> None:
    """Blur a uint8 (H, W) plane in place with blur_tensor's passes, on strips of rows, then of
    columns: the same result, bit for bit. Whole, a 50 MP plane cost 3 GB more: oneDNN writes a
    1-channel conv into 16 zero-padded channels (so strips are also faster)."""
    (h, w), p = x.shape, len(g) // 2
    for r in _strips(h, w + 2 * p):
        mid[r] = _blur_pass(x[r].float()[None, None], g, -1)[0, 0]
    for c in _strips(w, h + 2 * p):
        x[:, c] = _blur_pass(mid[None, None, :, c], g, -2)[0, 0].round_().clamp_(0, 255).to(torch.uint8)


def _strips(n: int, line: int) -> list[slice]:
    """n lines of `line` padded values each, in strips of STRIP_FLOATS to about twice that (one strip
    if all hold fewer). Never smaller: PyTorch convolves inputs of at most 20480 values with another
    backend than oneDNN, whose sums round differently, so a thin strip would not match the whole."""
    k = max(1, n * line // STRIP_FLOATS)
    return [slice(n * i // k, n * (i + 1) // k) for i in range(k)]


def blur_tensor(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable blur of float (N, C, H, W) by 1-D taps g: rows, then columns, reflect-101 borders."""
    return _blur_pass(_blur_pass(x, g, -1), g, -2)


def _blur_pass(x: torch.Tensor, g: torch.Tensor, dim: int) -> torch.Tensor:
    """One pass along dim (-1: rows, -2: columns). Depthwise conv2d (groups=C) in channels-last
    layout: 5-10x faster on CPU than NCHW."""
    k, c = len(g), x.shape[1]
    w = g.view(1, 1, 1, k) if dim == -1 else g.view(1, 1, k, 1)
    x = _pad_reflect(x, k // 2, dim).contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, w.expand(c, 1, *w.shape[2:]).contiguous(), groups=c)


def _pad_reflect(x: torch.Tensor, p: int, dim: int) -> torch.Tensor:
    """OpenCV's BORDER_REFLECT_101, i.e. F.pad's 'reflect'. F.pad refuses p >= the side, which a
    kernel 1/75 of the width needs on a thin panorama: then reflect repeatedly by index arithmetic."""
    n = x.shape[dim]
    if p < n:
        return F.pad(x, (p, p, 0, 0) if dim == -1 else (0, 0, p, p), mode="reflect")
    idx = torch.arange(-p, n + p)
    idx = idx % (2 * n - 2) if n > 1 else torch.zeros_like(idx)
    return x.index_select(dim, torch.where(idx >= n, 2 * n - 2 - idx, idx))


# ---------------------------------------------------------------- one photo, ready for a model

def fit_square(img: Image.Image, fit: str = "crop") -> Image.Image:
    """crop: the centred square of the shorter side; pad: centred on a square of the longer side
    filled with the photo's mean colour (black bars would be a strong feature no CIFAR image has);
    stretch: unchanged (the resize stretches it)."""
    _check_fit(fit)
    w, h = img.size
    if fit == "stretch" or w == h:
        return img
    if fit == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return img.crop((left, top, left + s, top + s))
    s = max(w, h)
    if s > PAD_MAX_SIDE:  # a 16000x20 panorama would need a 16000^2 canvas; 4096 px is plenty for 32x32
        w, h = max(1, round(w * PAD_MAX_SIDE / s)), max(1, round(h * PAD_MAX_SIDE / s))
        img, s = img.resize((w, h), Image.Resampling.BOX), PAD_MAX_SIDE
    canvas = Image.new("RGB", (s, s), tuple(round(v) for v in ImageStat.Stat(img).mean[:3]))
    canvas.paste(img, ((s - w) // 2, (s - h) // 2))
    return canvas


def _check_fit(fit: str) -> None:
    if fit not in FITS:
        raise UserError(f"--fit must be one of {', '.join(FITS)}, got '{fit}'")


def prepare_photo(img: Image.Image, filtered: bool = False, fit: str = "crop", size: int = 32) -> Image.Image:
    """Blur at full resolution (if filtered), fit to a square, resize to size x size with Lanczos."""
    if filtered:
        img = study_blur(img)
    return fit_square(img, fit).resize((size, size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------- a folder of class folders

@dataclass
class TestSet:
    __test__ = False  # not a pytest test class, despite the name

    x: torch.Tensor  # uint8 (N, 3, size, size)
    y: torch.Tensor  # int64 (N,)
    paths: list[str]  # relative to root, e.g. 'cat/0001.jpg'
    skipped: list[tuple[str, str]]  # (relative path, reason) of unreadable files
    root: str
    filtered: bool
    fit: str


def list_testset(root: str | os.PathLike) -> list[tuple[str, int]]:
    """(relative path, label) of every visible entry in the class folders, sorted by class then name.
    Entries that are not photos (broken symlinks, FIFOs, folders) are listed too: reading them gives
    the reason they are skipped. Unknown class folders are an error naming each, with a suggestion."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: test set folder not found" if not root.exists() else f"{root}: not a folder")
    folders = sorted(e.name for e in _entries(root) if _is_dir(e))
    unknown = [f for f in folders if f not in CLASSES]
    if unknown:
        raise UserError(f"{root}: unknown class folder{'s' * (len(unknown) > 1)} "
                        + ", ".join(f"'{f}'{_suggest(f)}" for f in unknown)
                        + f" (class folders must be among: {', '.join(CLASSES)})")
    if not folders:
        raise UserError(f"{root}: no class folders (expected folders named {', '.join(CLASSES)})")
    files = []
    for c, cls in enumerate(CLASSES):
        if cls in folders:
            files += [(f"{cls}/{n}", c) for n in sorted(e.name for e in _entries(root / cls))]
    return files


def hidden_count(root: str | os.PathLike) -> int:
    """Hidden entries (.DS_Store, ._photo.jpg, .thumbnails) in the class folders: ignored, only counted."""
    root = Path(root)
    return sum(e.name.startswith(".") for c in CLASSES if (root / c).is_dir() for e in _scandir(root / c))


def _entries(folder: Path) -> list[os.DirEntry]:
    return [e for e in _scandir(folder) if not e.name.startswith(".")]


def _scandir(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as e:
        raise UserError(f"{folder}: cannot read folder ({e.strerror or e})") from None


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()  # follows symlinks; a symlink loop raises instead of answering False
    except OSError:
        return False


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name.lower().rstrip("s"), CLASSES, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def load_testset(root: str | os.PathLike, filtered: bool = False, fit: str = "crop", size: int = 32,
                 strict: bool = False, cache_dir: Path | None = None) -> TestSet:
    """Every photo under root/<class>/ prepared by `prepare_photo`; unreadable files are skipped
    with their reason (or raise, if strict). Cached under <cache_dir>/testsets/."""
    _check_fit(fit)  # before any work
    root = Path(root).expanduser()
    files = list_testset(root)
    name, fingerprint = _cache_key(root, files, filtered, fit, size)
    cache = Path(cache_dir or default_cache_dir()).expanduser() / "testsets" / f"{name}.npz"
    arrays = npzcache.load(cache, fingerprint, lambda a: _valid(a, size), "prepared test set")
    if arrays is None:
        arrays = _prepare_all(root, files, filtered, fit, size)
        npzcache.save(cache, arrays, fingerprint, "prepared test set")
    if hidden := hidden_count(root):
        print(f"note: {root}: ignored {hidden} hidden file{'s' * (hidden > 1)} (names starting with '.')",
              file=sys.stderr)
    skipped = list(zip(arrays["skipped_paths"].tolist(), arrays["skipped_reasons"].tolist()))
    if strict and skipped:
        rel, reason = skipped[0]
        raise UserError(f"{root / rel}: cannot read image ({reason}); without --strict unreadable files are skipped")
    if len(arrays["y"]) == 0:
        raise UserError(f"{root}: no readable images" + (f" ({len(skipped)} unreadable, e.g. {skipped[0][0]}: "
                                                         f"{skipped[0][1]})" if skipped else ""))
    missing = [CLASSES[c] for c in range(len(CLASSES)) if not (arrays["y"] == c).any()]
    if missing:
        print(f"warning: {root}: no readable images for {', '.join(missing)} "
              "(folder missing, empty, or every file skipped); those classes are not scored", file=sys.stderr)
    return TestSet(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]), arrays["paths"].tolist(),
                   skipped, str(root), filtered, fit)


def _prepare_all(root: Path, files: list[tuple[str, int]], filtered: bool, fit: str,
                 size: int) -> dict[str, np.ndarray]:
    x = np.empty((len(files), 3, size, size), np.uint8)
    ok, skipped = [], []
    threads = torch.get_num_threads()
    # One photo's blur is a small op: thread barriers cost more than they save, and many times
    # more when a training run keeps a core busy (measured: 6x slower with 2 threads on 2 cores).
    torch.set_num_threads(1)
    try:
        for rel, label in files:
            try:
                img = prepare_photo(load_photo(root / rel), filtered, fit, size)
            except UnreadablePhoto as e:
                skipped.append((rel, e.reason))
                continue
            x[len(ok)] = np.asarray(img).transpose(2, 0, 1)
            ok.append((rel, label))
    finally:
        torch.set_num_threads(threads)
    return {
        "x": x[:len(ok)].copy(),
        "y": np.array([c for _, c in ok], np.int64),
        "paths": np.array([r for r, _ in ok], dtype=str),
        "skipped_paths": np.array([r for r, _ in skipped], dtype=str),
        "skipped_reasons": np.array([why for _, why in skipped], dtype=str),
    }


# ---------------------------------------------------------------- cache

def _cache_key(root: Path, files: list[tuple[str, int]], filtered: bool, fit: str, size: int) -> tuple[str, str]:
    """(file name, fingerprint): one cache file per root and options; the fingerprint holds every
    file's size, mtime and inode (what changes when a file is edited or replaced), never contents."""
    opts = f"cifarlab-testset-v{_CACHE_VERSION}\0{root.resolve()}\0{filtered}\0{fit}\0{size}"
    h = hashlib.sha256(opts.encode())
    for rel, _ in files:
        try:
            st = (root / rel).stat()
            h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode())
        except OSError:  # vanished, broken link: decoding will report it
            h.update(f"\0{rel}\0?".encode())
    return hashlib.sha256(opts.encode()).hexdigest()[:32], h.hexdigest()


def _valid(a: dict[str, np.ndarray], size: int) -> bool:
    x, y = a["x"], a["y"]
    return (x.dtype == np.uint8 and x.shape[1:] == (3, size, size) and y.dtype == np.int64
            and y.shape == (len(x),) == a["paths"].shape and a["skipped_paths"].shape == a["skipped_reasons"].shape)
