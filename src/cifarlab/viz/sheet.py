"""Turning maps into pictures: colour maps, heat-map overlays, tiling into grids. The helpers shared with
evaluate and report (font, colours, to_pil, stack, caption, save_png) live in `cifarlab.pictures` and
are re-exported here, so viz code says `sheet.X` for all of them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cifarlab.errors import UserError
from cifarlab.pictures import LINE, PAPER, SMALL, caption, save_png, stack, to_pil

__all__ = ["LINE", "PAPER", "SMALL", "caption", "colorize", "colormap", "grid", "overlay", "save_png", "stack",
           "tile", "to_pil"]


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
