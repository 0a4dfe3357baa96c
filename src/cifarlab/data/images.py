"""Decoding one image file from anywhere (the web, a stranger's dataset) into 8-bit RGB, or a one-line reason.

Everything that reads images goes through `load_photo` (a path) or `decode_image` (bytes), so the
guarantees hold in one place:
  * only plain formats are opened (no EPS: Pillow would run Ghostscript on it);
  * the size in the header is checked before any pixel is decoded: a decompression bomb (a tiny PNG
    claiming 50000 px a side) is refused in milliseconds, and no file costs more than MAX_PIXELS;
  * EXIF orientation is applied; transparency is composited on white; 16-bit is scaled to 8-bit;
    palette, CMYK, grey, LA, ... become RGB; animations give their first frame;
  * empty files, text/HTML with an image suffix, truncated or corrupt files, folders, FIFOs, broken
    symlinks and symlink loops raise UnreadablePhoto with a short reason; never another exception.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cifarlab.errors import UserError

# 50 MP covers 48 MP phone cameras; decoding plus the study's full-resolution blur peaks at 0.8 GB
# RSS, torch's 0.2 GB included, and took about 13 s on one thread of a busy machine (a rough figure;
# benchmarks/blur_memory.py). A side cap keeps the blur (kernel ~ width / 75) cheap on extreme panoramas.
MAX_PIXELS = 50_000_000
MAX_SIDE = 16_384
# Formats Pillow decodes itself. Not EPS (runs Ghostscript), not WMF/PSD/MPEG/... (rare, complex).
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM", "TGA", "ICO", "QOI", "AVIF", "JPEG2000")


class UnreadablePhoto(UserError):
    """A file that is not a decodable image; `reason` is the short why, for skip lists."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: cannot read image ({reason})")
        self.reason = reason


def load_photo(path: str | os.PathLike) -> Image.Image:
    """The photo at path as an 8-bit RGB image, as a viewer shows it (EXIF orientation applied)."""
    path = Path(path)
    if _check_regular_file(path) == 0:
        raise UnreadablePhoto(path, "empty file")
    return _decode(path, path)  # Pillow reads lazily: a huge file is not read whole before the size check


def decode_image(data: bytes, name: Path | str = "<bytes>") -> Image.Image:
    """Image bytes -> 8-bit RGB, or UnreadablePhoto naming `name` and the reason."""
    if not data:
        raise UnreadablePhoto(name, "empty file")
    return _decode(io.BytesIO(data), name)


def _decode(src: Path | io.BytesIO, name: Path | str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt-EXIF chatter: the result is what counts
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src, formats=_formats()) as img:
                _check_size(img, name)  # before load(): the header alone tells the cost
                img.seek(0)  # animations: the first frame
                img.load()
                return _to_rgb(_upright(img))
    except UnreadablePhoto:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise UnreadablePhoto(name, f"over {_cap()} pixels (decompression bomb guard)") from None
    except Image.UnidentifiedImageError:
        raise UnreadablePhoto(name, _unidentified(_head(src))) from None
    except Exception as e:  # Pillow raises many types for corrupt files (OSError, SyntaxError, ValueError, ...)
        raise UnreadablePhoto(name, _why(e)) from None


def _formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _cap() -> int:
    # Image.MAX_IMAGE_PIXELS may be lowered (tests do) or set to None (no Pillow limit)
    return min(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_PIXELS)


def _check_size(img: Image.Image, name: Path | str) -> None:
    w, h = img.size
    if w * h > _cap():
        raise UnreadablePhoto(name, f"{w}x{h} is over {_cap()} pixels (decompression bomb guard)")
    if max(w, h) > MAX_SIDE:
        raise UnreadablePhoto(name, f"{w}x{h} has a side over {MAX_SIDE} pixels")
    if w < 1 or h < 1:
        raise UnreadablePhoto(name, f"{w}x{h}: no pixels")


def _head(src: Path | io.BytesIO) -> bytes:
    if isinstance(src, io.BytesIO):
        return src.getvalue()[:512]
    try:
        with open(src, "rb") as f:
            return f.read(512)
    except OSError:
        return b"\0"


def _check_regular_file(path: Path) -> int:
    """Its size; refuses before opening: a FIFO would block forever, a folder or device is no photo."""
    try:
        st = path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnreadablePhoto(path, "symlink loop") from None
        if e.errno == errno.ENOENT and path.is_symlink():
            raise UnreadablePhoto(path, "broken symlink") from None
        raise UnreadablePhoto(path, e.strerror or type(e).__name__) from None
    if stat.S_ISDIR(st.st_mode):
        raise UnreadablePhoto(path, "a folder, not a file (class folders are not searched recursively)")
    if not stat.S_ISREG(st.st_mode):
        raise UnreadablePhoto(path, "not a regular file (FIFO, socket or device)")
    return st.st_size


def _unidentified(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if not head:
        return "blank file (only whitespace)"
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg", b"<head")):
        return "an HTML/XML page, not an image (a web page saved with an image name?)"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file, not an image"
    return f"not an image in a supported format ({', '.join(_formats())})"


def _why(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


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
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0) if a.dtype.kind == "f" else a
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
