"""Turning maps into pictures: colour maps, heat-map overlays, tiling, captions, stacking, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from cifarlab.errors import UserError
from cifarlab.io import atomic_write

PAPER, INK, LINE = (255, 255, 255), (20, 20, 20), (60, 100, 230)  # LINE: the study's thin blue separators


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font where Pillow has FreeType
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


FONT, SMALL = _font(12), _font(10)


def colormap(name: str):
    """A matplotlib colour map by name; UserError for an unknown one."""
    from matplotlib import colormaps

    try:
        return colormaps[name]
    except KeyError:
        raise UserError(f"unknown colour map '{name}' (e.g. inferno, viridis, magma, jet, turbo)") from None


def colorize(m: torch.Tensor, lo: float, hi: float, cmap: str = "inferno") -> np.ndarray:
    """A 2-D map -> uint8 RGB (H, W, 3): lo maps to the colour map's first colour, hi to its last."""
    t = ((m.detach().float() - lo) / max(hi - lo, 1e-12)).clamp(0, 1).numpy()
    return (colormap(cmap)(t)[..., :3] * 255).round().astype(np.uint8)


def to_pil(x: torch.Tensor) -> Image.Image:
    """A float [0, 1] or uint8 (3, H, W) image."""
    if x.dtype != torch.uint8:
        x = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy())


def tile(img: Image.Image | np.ndarray, size: int, smooth: bool = False) -> Image.Image:
    """Scale to size x size: nearest by default, so the map's true resolution stays visible."""
    img = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    return img.resize((size, size), Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST)


def overlay(image: torch.Tensor, heat: torch.Tensor, size: int, cmap: str = "jet", alpha: float = 0.5,
            hi: float | None = None) -> Image.Image:
    """The heat map (h, w), upsampled bilinearly and scaled to [0, hi or its max], over the image."""
    h = F.interpolate(heat.detach().float()[None, None], size=image.shape[-2:], mode="bilinear",
                      align_corners=False)[0, 0]
    top = float(h.max()) if hi is None else hi
    base = np.asarray(tile(to_pil(image), size, smooth=True), np.float32)
    hot = np.asarray(tile(colorize(h, 0.0, top if top > 0 else 1.0, cmap), size, smooth=True), np.float32)
    return Image.fromarray(((1 - alpha) * base + alpha * hot).round().astype(np.uint8))


def grid(tiles: list[Image.Image], cols: int, gap: int = 2, bg: tuple = PAPER) -> Image.Image:
    """Tiles of one size in rows of `cols`."""
    w, h = tiles[0].size
    rows = -(-len(tiles) // cols)
    out = Image.new("RGB", (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap), bg)
    for i, t in enumerate(tiles):
        out.paste(t, ((i % cols) * (w + gap), (i // cols) * (h + gap)))
    return out


def stack(images: list[Image.Image], horizontal: bool = False, gap: int = 6, line: tuple | None = None,
          bg: tuple = PAPER) -> Image.Image:
    """Images one below (or beside) the other; `line`: a 1 px rule of that colour in each gap."""
    ws, hs = [i.width for i in images], [i.height for i in images]
    size = (sum(ws) + gap * (len(images) - 1), max(hs)) if horizontal else (max(ws), sum(hs) + gap * (len(images) - 1))
    out = Image.new("RGB", size, bg)
    draw, pos = ImageDraw.Draw(out), 0
    for i, img in enumerate(images):
        out.paste(img, (pos, 0) if horizontal else (0, pos))
        pos += (img.width if horizontal else img.height) + gap
        if line and i < len(images) - 1:
            mid = pos - gap // 2 - 1
            draw.line([(mid, 0), (mid, size[1])] if horizontal else [(0, mid), (size[0], mid)], fill=line, width=1)
    return out


def caption(img: Image.Image, text: str, above: bool = True, font: ImageFont.ImageFont = FONT,
            width: int | None = None) -> Image.Image:
    """The image with lines of text above (or below) it."""
    lines = text.split("\n")
    boxes = [font.getbbox(t or " ") for t in lines]
    line_h = max(b[3] for b in boxes) + 3
    w = max(img.width, width or 0, *(b[2] + 4 for b in boxes))
    out = Image.new("RGB", (w, img.height + line_h * len(lines) + 2), PAPER)
    text_top = 1 if above else img.height + 2
    out.paste(img, (0, line_h * len(lines) + 2 if above else 0))
    draw = ImageDraw.Draw(out)
    for i, t in enumerate(lines):
        draw.text((2, text_top + i * line_h), t, fill=INK, font=font)
    return out


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Atomically: a crash leaves the old file or none, never half a PNG."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: folder {path.parent} does not exist")
    atomic_write(path, lambda f: img.save(f, format="PNG"))
    return path
