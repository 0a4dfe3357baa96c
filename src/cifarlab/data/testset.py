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

The prepared uint8 arrays are cached in $CIFARLAB_HOME/testsets/<key>.npz (key: root, every
file's size and mtime, and the options), so repeated evaluations skip the decoding.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, ImageStat

from cifarlab import CLASSES
from cifarlab.data.cifar import default_cache_dir
from cifarlab.errors import UserError
from cifarlab.io import atomic_write

FITS = ("crop", "pad", "stretch")
BLUR_DIVISOR = 75  # the study: kernel size = photo width / 75
_CACHE_VERSION = 1  # bump when the pipeline's output changes


class UnreadablePhoto(UserError):
    """A file that is not a decodable image; `reason` is the short why, for skip lists."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: cannot read image ({reason})")
        self.reason = reason


# ---------------------------------------------------------------- decoding

def load_photo(path: str | os.PathLike) -> Image.Image:
    """The photo as an 8-bit RGB image, as a viewer shows it (EXIF orientation applied)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadablePhoto(path, "empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # too big: refuse, don't just warn
            with Image.open(path) as img:
                img.seek(0)  # animations: the first frame
                img.load()
                return _to_rgb(_upright(img))
    except UnreadablePhoto:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UnreadablePhoto(path, f"over {Image.MAX_IMAGE_PIXELS} pixels (decompression bomb guard)") from None
    except Image.UnidentifiedImageError:
        raise UnreadablePhoto(path, "not an image Pillow can identify") from None
    except Exception as e:  # Pillow raises many types for corrupt files (OSError, SyntaxError, ValueError, ...)
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise UnreadablePhoto(path, f"{type(e).__name__}: {first}" if first else type(e).__name__) from None


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost us the photo
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        img = Image.fromarray(_to_uint8(np.asarray(img)))
    if img.has_transparency_data:  # RGBA, LA, PA, or a palette/grey image with a transparent colour
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")  # L, P, CMYK, YCbCr, 1, ...


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """High-bit-depth grey to 8 bits. Pillow's own convert clips at 255 (a 16-bit photo turns white),
    so scale: 16-bit by 255/65535; floats in [0, 1] by 255; 32-bit ints or other floats by the
    smallest of 8/16 bits that holds their maximum (the file does not say its bit depth)."""
    top = float(a.max(initial=0))
    if (a.dtype.kind == "u" and a.dtype.itemsize == 2) or 255 < top <= 65535:  # any byte order
        scale = 255 / 65535
    elif a.dtype.kind == "f" and top <= 1:
        scale = 255.0
    elif top <= 255:
        scale = 1.0
    else:
        scale = 255 / top
    return np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)


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
    x = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)[None].float()  # HWC: channels-last
    y = blur_tensor(x, g)
    return Image.fromarray(y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy())


def blur_tensor(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable blur of float (N, C, H, W) by 1-D taps g: rows, then columns, reflect-101 borders.
    Depthwise conv2d (groups=C) in channels-last layout: 5-10x faster on CPU than NCHW."""
    k, c = len(g), x.shape[1]
    for w in (g.view(1, 1, 1, k), g.view(1, 1, k, 1)):
        dim = -1 if w.shape[-1] == k else -2
        x = _pad_reflect(x, k // 2, dim).contiguous(memory_format=torch.channels_last)
        x = F.conv2d(x, w.expand(c, 1, *w.shape[2:]).contiguous(), groups=c)
    return x


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
    """(relative path, label) of every visible file in the class folders, sorted by class then name."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: test set folder not found" if not root.exists() else f"{root}: not a folder")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    unknown = [f for f in folders if f not in CLASSES]
    if unknown:
        raise UserError(f"{root}: unknown class folder '{unknown[0]}' "
                        f"(class folders must be among: {', '.join(CLASSES)})")
    if not folders:
        raise UserError(f"{root}: no class folders (expected folders named {', '.join(CLASSES)})")
    files = []
    for c, cls in enumerate(CLASSES):
        if cls in folders:
            names = sorted(e.name for e in os.scandir(root / cls) if e.is_file() and not e.name.startswith("."))
            files += [(f"{cls}/{n}", c) for n in names]
    return files


def load_testset(root: str | os.PathLike, filtered: bool = False, fit: str = "crop", size: int = 32,
                 strict: bool = False, cache_dir: Path | None = None) -> TestSet:
    """Every photo under root/<class>/ prepared by `prepare_photo`; unreadable files are skipped
    with their reason (or raise, if strict). Cached under <cache_dir>/testsets/."""
    _check_fit(fit)  # before any work
    root = Path(root).expanduser()
    files = list_testset(root)
    key = _cache_key(root, files, filtered, fit, size)
    cache = Path(cache_dir or default_cache_dir()).expanduser() / "testsets" / f"{key}.npz"
    arrays = _load_cache(cache, size)
    if arrays is None:
        arrays = _prepare_all(root, files, filtered, fit, size)
        _save_cache(cache, arrays)
    skipped = list(zip(arrays["skipped_paths"].tolist(), arrays["skipped_reasons"].tolist()))
    if strict and skipped:
        rel, reason = skipped[0]
        raise UserError(f"{root / rel}: cannot read image ({reason}); without --strict unreadable files are skipped")
    if len(arrays["y"]) == 0:
        raise UserError(f"{root}: no readable images" + (f" ({len(skipped)} unreadable, e.g. {skipped[0][0]}: "
                                                         f"{skipped[0][1]})" if skipped else ""))
    missing = [CLASSES[c] for c in range(len(CLASSES)) if not (arrays["y"] == c).any()]
    if missing:
        print(f"warning: {root}: no images for {', '.join(missing)}", file=sys.stderr)
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

def _cache_key(root: Path, files: list[tuple[str, int]], filtered: bool, fit: str, size: int) -> str:
    """Cheap: the root, every file's size and mtime, and the options; never the contents."""
    h = hashlib.sha256(f"cifarlab-testset-v{_CACHE_VERSION}\0{root.resolve()}\0{filtered}\0{fit}\0{size}".encode())
    for rel, _ in files:
        try:
            st = (root / rel).stat()
            h.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        except OSError:  # vanished since listing: decoding will report it
            h.update(f"\0{rel}\0?".encode())
    return h.hexdigest()[:32]


_KEYS = ("x", "y", "paths", "skipped_paths", "skipped_reasons")


def _load_cache(cache: Path, size: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if absent or unusable (a bad file is deleted, then rebuilt)."""
    if not cache.is_file():
        return None
    try:
        with open(cache, "rb") as f, np.load(f, allow_pickle=False) as z:
            a = {k: z[k] for k in _KEYS}
        x, y = a["x"], a["y"]
        if not (x.dtype == np.uint8 and x.shape[1:] == (3, size, size) and y.dtype == np.int64
                and y.shape == (len(x),) == a["paths"].shape
                and a["skipped_paths"].shape == a["skipped_reasons"].shape):
            raise ValueError("unexpected arrays")
        return a
    except Exception:  # corrupt, truncated, or another layout: rebuild
        try:
            cache.unlink(missing_ok=True)
        except OSError:
            pass
        return None


def _save_cache(cache: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically; caching is optional, so OS errors (read-only, disk full) only warn."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda f: np.savez(f, **arrays))
    except OSError as e:
        print(f"note: not caching the prepared test set ({e.strerror or e}: {e.filename or cache})", file=sys.stderr)
