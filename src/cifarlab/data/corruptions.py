"""CIFAR-10-C-style corruptions, generated on the fly for uint8 image batches (N, 3, H, W).

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019. The severity parameters below are the CIFAR ones of their released code,
github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py (the ImageNet ones differ):

  gaussian_noise    std of N(0, c) added to pixels in [0, 1]       .04  .06  .08  .09  .10
  gaussian_blur     Gaussian sigma in px (skimage: truncate 4,     .4   .6   .7   .8   1
                    border 'nearest')
  defocus_blur      disk (radius px, anti-alias sigma)             (.3,.4) (.4,.5) (.5,.6) (1,.2) (1.5,.1)
  jpeg_compression  JPEG quality (Pillow)                          80   65   58   50   40
  contrast          factor on the distance to the per-channel mean .75  .5   .4   .3   .15
  brightness        added to HSV value V (clipped to 1)            .05  .1   .15  .2   .3
  pixelate          box-downscale to int(32 c) px, box-upscale     .95  .9   .85  .75  .65

Like their code, results are cut back to uint8 by truncation (np.uint8 of a float). Noise is drawn
from a torch generator seeded per (seed, corruption, severity): the same images for every model.

`sharpen` (unsharp masking) goes the other way, for the blur hypothesis: sharpen CIFAR images.
"""

from __future__ import annotations

import io
import zlib
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cifarlab.errors import UserError

SEVERITY: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
}
SHARPEN_SIGMA = 1.0  # px: the unsharp mask's blur
SHARPEN_AMOUNTS = (0.0, 0.5, 1.0, 2.0, 4.0)  # out = x + amount * (x - blur(x))


# ---------------------------------------------------------------- helpers

def _float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 255


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).to(torch.uint8)  # truncates, like np.uint8 in make_cifar_c.py


def _conv_sep(x: torch.Tensor, g: torch.Tensor, mode: str) -> torch.Tensor:
    """Separable filter of float (N, C, H, W) by 1-D taps g; mode 'reflect' (cv2's REFLECT_101) or
    'replicate' (skimage's 'nearest')."""
    k, c, p = len(g), x.shape[1], len(g) // 2
    x = F.conv2d(F.pad(x, (p, p, 0, 0), mode=mode), g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(F.pad(x, (0, 0, p, p), mode=mode), g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def gaussian_taps(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Normalised taps over radius int(truncate * sigma + 0.5), as scipy.ndimage/skimage use."""
    r = max(int(truncate * sigma + 0.5), 1)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-t.square() / (2 * sigma**2))
    return (g / g.sum()).float()


def _cv2_gaussian3(sigma: float) -> torch.Tensor:
    """cv2.GaussianBlur's 3 taps for a given sigma (ksize 3)."""
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * sigma**2))
    return g / g.sum()


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """make_cifar_c.disk: a 17x17 aliased disk (radius <= 8), normalised, then smoothed by a 3x3
    Gaussian of sigma alias_blur (borders reflect-101, cv2's default)."""
    r = torch.arange(-8, 9, dtype=torch.float64)
    d = ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).double()
    d = d / d.sum()
    g = _cv2_gaussian3(alias_blur)
    d = F.pad(d[None, None], (1, 1, 1, 1), mode="reflect")
    d = F.conv2d(F.conv2d(d, g.view(1, 1, 1, 3)), g.view(1, 1, 3, 1))
    return d[0, 0].float()


def _per_image(x: torch.Tensor, fn: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    out = torch.empty_like(x)
    for i, img in enumerate(x.permute(0, 2, 3, 1).numpy()):
        out[i] = torch.from_numpy(np.array(fn(Image.fromarray(img)).convert("RGB"))).permute(2, 0, 1)
    return out


# ---------------------------------------------------------------- the corruptions

def gaussian_noise(x: torch.Tensor, c: float, gen: torch.Generator) -> torch.Tensor:
    f = _float(x)
    return _uint8(f + torch.randn(f.shape, generator=gen) * c)


def gaussian_blur(x: torch.Tensor, sigma: float, gen: torch.Generator | None = None) -> torch.Tensor:
    return _uint8(_conv_sep(_float(x), gaussian_taps(sigma), "replicate"))


def defocus_blur(x: torch.Tensor, c: tuple[float, float], gen: torch.Generator | None = None) -> torch.Tensor:
    k, ch = disk_kernel(*c), x.shape[1]
    f = F.pad(_float(x), (8, 8, 8, 8), mode="reflect")  # cv2.filter2D's default border
    return _uint8(F.conv2d(f, k.expand(ch, 1, 17, 17).contiguous(), groups=ch))


def jpeg_compression(x: torch.Tensor, quality: int, gen: torch.Generator | None = None) -> torch.Tensor:
    def roundtrip(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return Image.open(buf)
    return _per_image(x, roundtrip)


def contrast(x: torch.Tensor, c: float, gen: torch.Generator | None = None) -> torch.Tensor:
    f = _float(x)
    m = f.mean((2, 3), keepdim=True)
    return _uint8((f - m) * c + m)


def brightness(x: torch.Tensor, c: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """HSV V + c with H and S kept: in HSV, RGB is proportional to V, so scale RGB by V'/V
    (a black pixel has S = 0 and becomes grey V')."""
    f = _float(x)
    v = f.amax(1, keepdim=True)
    nv = (v + c).clamp(max=1)
    return _uint8(torch.where(v > 0, f * nv / v.clamp(min=1e-12), nv))


def pixelate(x: torch.Tensor, c: float, gen: torch.Generator | None = None) -> torch.Tensor:
    h, w = x.shape[-2:]
    box = Image.Resampling.BOX
    return _per_image(x, lambda img: img.resize((int(w * c), int(h * c)), box).resize((w, h), box))


def sharpen(x: torch.Tensor, amount: float, sigma: float = SHARPEN_SIGMA) -> torch.Tensor:
    """Unsharp mask: x + amount (x - G_sigma * x), rounded; amount 0 returns x unchanged."""
    if amount == 0:
        return x.clone()
    f = x.float()
    out = f + amount * (f - _conv_sep(f, gaussian_taps(sigma), "reflect"))
    return out.round().clamp(0, 255).to(torch.uint8)


CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise, "gaussian_blur": gaussian_blur, "defocus_blur": defocus_blur,
    "jpeg_compression": jpeg_compression, "contrast": contrast, "brightness": brightness, "pixelate": pixelate,
}


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0, batch: int = 1000) -> torch.Tensor:
    """x (uint8, N x 3 x H x W) under corruption `name` at severity 1-5; deterministic for a seed."""
    if name not in CORRUPTIONS:
        raise UserError(f"unknown corruption '{name}' (choose from {', '.join(CORRUPTIONS)})")
    if severity not in range(1, 6):
        raise UserError(f"severity must be 1-5, got {severity}")
    if x.dtype != torch.uint8 or x.dim() != 4 or min(x.shape[-2:]) < 9:  # defocus reflects 8 px
        raise UserError(f"corrupt: expected uint8 images (N, C, H, W) of at least 9x9 px, got {x.dtype} "
                        f"{tuple(x.shape)}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{name}/{severity}".encode()))
    c = SEVERITY[name][severity - 1]
    # batches bound the float copies' memory; the generator keeps its stream across them
    return torch.cat([CORRUPTIONS[name](x[i:i + batch], c, gen) for i in range(0, len(x), batch)]) \
        if len(x) else x.clone()


def parse_severities(text: str) -> list[int]:
    """'1-5', '1,3,5' or '2' -> sorted severities in 1..5."""
    out: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"--severities: expected e.g. 1-5 or 1,3,5, got '{text}'") from None
    if not out or min(out) < 1 or max(out) > 5:
        raise UserError(f"--severities must lie in 1-5, got '{text}'")
    return sorted(out)


def parse_corruptions(text: str) -> list[str]:
    """'all', 'none' or a comma list of names from CORRUPTIONS."""
    if text.strip() == "all":
        return list(CORRUPTIONS)
    if text.strip() == "none":
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad or not names:
        raise UserError(f"--corruptions: unknown '{bad[0] if bad else text}' (choose from all, none, "
                        f"{', '.join(CORRUPTIONS)})")
    return names


def high_frequency_energy(x: torch.Tensor, cutoff: float = 0.25) -> float:
    """Mean spectral power above `cutoff` cycles/px (Nyquist 0.5) of the mean-removed images."""
    f = x.float()
    f = f - f.mean((-2, -1), keepdim=True)
    p = torch.fft.fft2(f).abs().square()
    fy, fx = torch.fft.fftfreq(x.shape[-2]), torch.fft.fftfreq(x.shape[-1])
    mask = (fy[:, None].abs() > cutoff) | (fx[None, :].abs() > cutoff)
    return p[..., mask].mean().item()


__all__ = ["SEVERITY", "CORRUPTIONS", "SHARPEN_AMOUNTS", "corrupt", "sharpen", "parse_severities",
           "parse_corruptions", "high_frequency_energy", "disk_kernel", "gaussian_taps"]
