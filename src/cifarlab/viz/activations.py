"""Appendix A: what the activation layers output for one image. About four layers spread from input to
output; 16 channels of each (a fixed random sample, or the 16 most active), each channel's map through
a colour map, tiled 2x8; layers stacked with the one nearest the input on top."""

from __future__ import annotations

import torch
from PIL import Image

from cifarlab import CLASSES
from cifarlab.viz.probe import Layer, Probe
from cifarlab.viz import sheet

CHANNELS, COLS = 16, 8


def channel_sample(layer: Layer, index: int, n: int = CHANNELS) -> torch.Tensor:
    """A fixed random sample of n channels: the same for every image, so maps can be compared."""
    g = torch.Generator().manual_seed(1000 + index)
    return torch.randperm(layer.shape[0], generator=g)[:n].sort().values


@torch.no_grad()
def layer_maps(probe: Probe, x: torch.Tensor, layers: list[Layer], top: bool = False,
               n: int = CHANNELS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (channel indices, their maps (n, H, W)) for one float image (3, S, S)."""
    acts = probe.capture(x[None], layers)
    out = []
    for i, (layer, a) in enumerate(zip(layers, acts)):
        a = a[0]
        idx = a.mean((1, 2)).topk(min(n, len(a))).indices if top else channel_sample(layer, probe.layers.index(layer), n)
        out.append((idx, a[idx]))
    return out


def layer_block(layer: Layer, idx: torch.Tensor, maps: torch.Tensor, size: int, cmap: str, top: bool) -> Image.Image:
    """One layer: a caption and its channel maps tiled 2x8. The colour scale runs from 0 (black:
    inactive, or negative after an ELU) to the largest value shown in the layer, so channels of a
    layer compare and dead ones look dead, as in the study's figures."""
    hi = float(maps.max())
    tiles = [sheet.tile(sheet.colorize(m, 0.0, hi if hi > 0 else 1.0, cmap), size) for m in maps]
    c, h, w = layer.shape
    how = "most active" if top else "fixed sample"
    text = f"{layer.name}  {h}x{w}x{c}: {len(idx)} of {c} channels ({how}), max {hi:.2g}"
    return sheet.caption(sheet.grid(tiles, COLS), text, font=sheet.SMALL)


def panel(probe: Probe, x: torch.Tensor, name: str, label: int | None, layers: list[Layer], top: bool = False,
          cmap: str = "inferno", size: int = 64) -> Image.Image:
    """The Appendix A panel for one model and one uint8 image (3, 32, 32): the input as the model sees
    it, then the chosen layers top (input side) to bottom (output side)."""
    xin = probe.to_input(x[None])[0]
    with torch.no_grad():
        p = probe.probs(xin[None])[0]
    blocks = [layer_block(layer, idx, maps, size, cmap, top)
              for layer, (idx, maps) in zip(layers, layer_maps(probe, xin, layers, top))]
    head = sheet.caption(sheet.tile(sheet.to_pil(xin), 2 * size, smooth=probe.input_size > 32),
                         f"{probe.label}: {name}\n{describe(p, label)}")
    return sheet.stack([head, *blocks], gap=8)


def describe(p: torch.Tensor, label: int | None, sep: str = ", ") -> str:
    """'pred cat 0.71, true dog 0.12' (or just the prediction)."""
    k = int(p.argmax())
    text = f"pred {CLASSES[k]} {p[k]:.2f}"
    return text + (f"{sep}true {CLASSES[label]} {p[label]:.2f}" if label is not None else "")
