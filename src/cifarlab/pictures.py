"""The one home for picture helpers: fonts and colours, tensor -> PIL, stacking, captions, and `save_png`
for PIL images and matplotlib figures alike.

It sits at the bottom of the layers, beside `io`, because evaluate (the misclassified grid, the filter
preview), viz (every sheet) and report (every figure) all draw with it, and evaluate may not import viz.
matplotlib is imported only when a figure is saved."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw, ImageFont

from cifarlab.errors import UserError
from cifarlab.io import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PAPER, INK, LINE = (255, 255, 255), (20, 20, 20), (60, 100, 230)  # LINE: the study's thin blue separators


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font where Pillow has FreeType
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


FONT, SMALL = _font(12), _font(10)


def to_pil(x: torch.Tensor) -> Image.Image:
    """A float [0, 1] or uint8 (3, H, W) image."""
    if x.dtype != torch.uint8:
        x = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy())


def stack(images: list[Image.Image], horizontal: bool = False, gap: int = 6, line: tuple | None = None,
          bg: tuple = PAPER) -> Image.Image:
    """Images one below (or beside) the other; `line`: a 1 px rule of that colour in each gap. None: 1x1 px."""
    if not images:
        return Image.new("RGB", (1, 1), bg)
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
            width: int | None = None, center: bool = False) -> Image.Image:
    """The image with lines of text above (or below) it; left-aligned, or centred with `center`."""
    lines = text.split("\n")
    boxes = [font.getbbox(t or " ") for t in lines]
    line_h = max(b[3] for b in boxes) + 3
    w = max(img.width, width or 0, *(b[2] + 4 for b in boxes))
    out = Image.new("RGB", (w, img.height + line_h * len(lines) + 2), PAPER)
    text_top = 1 if above else img.height + 2
    out.paste(img, ((w - img.width) // 2 if center else 0, line_h * len(lines) + 2 if above else 0))
    draw = ImageDraw.Draw(out)
    for i, (t, b) in enumerate(zip(lines, boxes)):
        draw.text(((w - b[2]) // 2 if center else 2, text_top + i * line_h), t, fill=INK, font=font)
    return out


def save_png(picture: Image.Image | Figure, path: str | Path, dpi: int = 100) -> Path:
    """Atomically (a crash leaves the old file or none, never half a PNG): a PIL image as it is, a
    matplotlib figure at `dpi`."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"{path}: folder {path.parent} does not exist")
    if isinstance(picture, Image.Image):
        atomic_write(path, lambda f: picture.save(f, format="PNG"))
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(picture)  # attach an Agg canvas: PNG output without selecting a pyplot backend
        atomic_write(path, lambda f: picture.savefig(f, format="png", dpi=dpi))
    return path


def figure_image(fig: Figure, dpi: int = 100) -> Image.Image:
    """A matplotlib figure as an RGB PIL image, in memory (for pages that show figures without files)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
