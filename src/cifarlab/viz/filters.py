"""Appendix B: DeepDream-style filter images (activation maximisation), the recipe of Lucid/lucent.

Start from grey plus a little noise at the model's input size and climb the gradient of one channel's
mean output in a conv layer. Plain pixel ascent gives high-frequency noise, so, as in Lucid:
  - the image is parameterised in Fourier space, each frequency scaled by 1/f, with colours decorrelated
    by ImageNet's colour covariance and squashed by a sigmoid (a smooth, natural-looking prior);
  - every step sees a randomly padded, jittered, scaled and rotated copy (a robust, not a lucky, image).
Many channels run as one batch (one image per channel); those with the highest final activation are kept.

Written by hand: Captum has no feature visualisation in a release (captum.optim never shipped), and
lucent needs torchvision and kornia, which cifarlab does not depend on. It is ~50 lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from cifarlab.viz import sheet
from cifarlab.viz.probe import Layer, Probe

# Lucid's square root of ImageNet's colour correlation matrix (its SVD form), columns normalised below.
COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


class FourierImage(nn.Module):
    """n images of size x size: a spectrum scaled by 1/frequency, decorrelated colours, sigmoid."""

    def __init__(self, n: int, size: int, generator: torch.Generator, sd: float = 0.01):
        super().__init__()
        freqs = (torch.fft.fftfreq(size)[:, None] ** 2 + torch.fft.rfftfreq(size)[None] ** 2).sqrt()
        self.register_buffer("scale", 1.0 / freqs.clamp(min=1.0 / size))
        self.spectrum = nn.Parameter(torch.randn(n, 3, size, size // 2 + 1, 2, generator=generator) * sd)
        self.size = size

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        img = torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho") / 4  # Lucid's "magic" 4
        colors = COLOR_SQRT / COLOR_SQRT.norm(dim=0).max()
        return torch.sigmoid(torch.einsum("nchw,dc->ndhw", img, colors))  # near 0.5 (grey) at the start


def random_transform(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Lucid's standard transforms scaled to the image size (at 128 px: pad 8, jitter +-6 px, scale
    0.9-1.1, rotate +-10 degrees), as one affine warp per image; the output keeps the input's size."""
    n, _, s, _ = x.shape
    pad, jitter = max(1, round(s / 16)), max(1, round(s / 21))
    big = s + 2 * pad
    x = F.pad(x, (pad,) * 4, value=0.5)
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(10 if s >= 64 else 5)
    zoom = 0.9 + 0.2 * torch.rand(n, generator=g) if s >= 64 else 0.95 + 0.1 * torch.rand(n, generator=g)
    shift = torch.randint(-jitter, jitter + 1, (n, 2), generator=g).float() * 2 / big
    k = s / big / zoom  # sample the centre s x s of the padded image, zoomed
    theta = torch.stack([torch.stack([k * angle.cos(), -k * angle.sin(), shift[:, 0]], 1),
                         torch.stack([k * angle.sin(), k * angle.cos(), shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 3, s, s], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def channel_means(probe: Probe, layer: Layer, x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Image i's mean pre-activation in channel channels[i] (the objective)."""
    (pre,) = probe.capture(x, [layer], pre=True)
    return pre[torch.arange(len(x)), channels].mean((1, 2))


@dataclass
class Dream:
    layer: Layer
    channels: torch.Tensor  # (n,)
    images: torch.Tensor  # float [0, 1] (n, 3, S, S)
    start: torch.Tensor  # the objective on the starting images (n,)
    final: torch.Tensor  # and on the final images, untransformed (n,)


def dream(probe: Probe, layer: Layer, channels: torch.Tensor, steps: int = 128, lr: float = 0.1,
          seed: int = 0, batch: int = 32) -> Dream:
    """One image per channel, optimised `steps` times with Adam; batches of `batch` channels."""
    g = torch.Generator().manual_seed(seed)
    images, start, final = [], [], []
    for chunk in channels.split(batch):
        param = FourierImage(len(chunk), probe.input_size, g)
        opt = torch.optim.Adam(param.parameters(), lr=lr)
        with torch.no_grad():
            start.append(channel_means(probe, layer, param(), chunk))
        for _ in range(steps):
            loss = -channel_means(probe, layer, random_transform(param(), g), chunk).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            images.append(param())
            final.append(channel_means(probe, layer, images[-1], chunk))
    return Dream(layer, channels, torch.cat(images), torch.cat(start), torch.cat(final))


def candidates(layer: Layer, index: int, n: int) -> torch.Tensor:
    """All channels if the layer has at most n, else a fixed random sample of n."""
    c = layer.shape[0]
    if c <= n:
        return torch.arange(c)
    return torch.randperm(c, generator=torch.Generator().manual_seed(2000 + index))[:n].sort().values


def best(d: Dream, keep: int) -> Dream:
    """The `keep` channels with the highest final activation, highest first."""
    order = d.final.argsort(descending=True)[:keep]
    return Dream(d.layer, d.channels[order], d.images[order], d.start[order], d.final[order])


def layer_block(d: Dream, tried: int, size: int, cols: int = 8) -> Image.Image:
    tiles = [sheet.caption(sheet.tile(sheet.to_pil(img), size, smooth=size < img.shape[-1]),
                           f"#{int(c)} {float(a):.3g}", above=False, font=sheet.SMALL)
             for img, c, a in zip(d.images, d.channels, d.final)]
    ch, h, w = d.layer.shape
    text = (f"{d.layer.name}  {h}x{w}x{ch}: {len(tiles)} of {tried} channels tried, highest final activation "
            f"(mean {float(d.final.mean()):.3g}; grey start {float(d.start.mean()):.2g})")
    return sheet.caption(sheet.grid(tiles, min(cols, len(tiles))), text, font=sheet.SMALL)


def panel(probe: Probe, layers: list[Layer], tried: int = 32, keep: int = 16, steps: int = 128, seed: int = 0,
          size: int | None = None) -> Image.Image:
    """The Appendix B panel for one model: per layer, the best `keep` of `tried` channels, layers
    stacked (input side on top) and separated by thin blue lines."""
    size = size or max(64, probe.input_size)
    blocks = []
    for layer in layers:
        idx = probe.layers.index(layer)
        d = dream(probe, layer, candidates(layer, idx, tried), steps, seed=seed + idx)
        blocks.append(layer_block(best(d, keep), min(tried, layer.shape[0]), size))
    head = sheet.caption(Image.new("RGB", (1, 1), sheet.PAPER),
                         f"{probe.label}: filter images, {steps} steps of gradient ascent from grey "
                         f"at {probe.input_size} px")
    return sheet.stack([head, *blocks], gap=9, line=sheet.LINE)
