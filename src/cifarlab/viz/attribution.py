"""Where a model looks (the study's further work): occlusion maps and class activation maps.

Occlusion and Grad-CAM are Captum's (Occlusion, LayerGradCam). Grad-CAM++ and Score-CAM are not in
Captum, so they are written here from their papers, a few lines each, reusing the same hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam, Occlusion
from PIL import Image

from cifarlab import CLASSES
from cifarlab.errors import UserError
from cifarlab.viz import sheet
from cifarlab.viz.activations import describe
from cifarlab.viz.inputs import Photos
from cifarlab.viz.probe import Layer, Probe

CAMS = ("gradcam", "gradcam++", "scorecam")
TITLES = {"occlusion": "occlusion", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM"}


def patch_and_stride(size: int, patch: int | None, stride: int | None) -> tuple[int, int]:
    """Defaults: an eighth of the input side, moved half a patch at a time (15 x 15 positions)."""
    patch = patch or max(2, size // 8)
    stride = stride or max(1, patch // 2)
    if not 1 <= patch <= size:
        raise UserError(f"--patch must be in [1, {size}] (the model's input side), got {patch}")
    if not 1 <= stride <= size:
        raise UserError(f"--stride must be in [1, {size}], got {stride}")
    return patch, stride


def occlusion(probe: Probe, x: torch.Tensor, target: int, patch: int | None = None, stride: int | None = None,
              batch: int = 64) -> torch.Tensor:
    """Drop in p(target) when a grey patch covers each pixel (averaged over the patches covering it),
    for a float image (3, S, S) at the input size; (S, S), positive where covering hurts the class."""
    patch, stride = patch_and_stride(probe.input_size, patch, stride)
    with torch.no_grad():
        attr = Occlusion(probe.probs).attribute(x[None], sliding_window_shapes=(3, patch, patch),
                                                strides=(3, stride, stride), baselines=0.5, target=target,
                                                perturbations_per_eval=batch)
    return attr[0].mean(0)  # the same value in all three channels


def gradcam(probe: Probe, x: torch.Tensor, target: int, layer: Layer) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k mean(dy_c/dA_k) A_k) on the layer's grid (h, w)."""
    cam = LayerGradCam(probe.forward, layer.act).attribute(x[None].clone().requires_grad_(True), target=target,
                                                           relu_attributions=True)
    return cam[0, 0].detach()


def _activation_and_gradient(probe: Probe, x: torch.Tensor, target: int, layer: Layer) -> tuple[torch.Tensor, ...]:
    """The layer's activation A (K, h, w) and dy_c/dA for the class logit y_c."""
    saved: list[torch.Tensor] = []
    handle = layer.act.register_forward_hook(lambda m, i, o: saved.append(o))
    try:
        # the input requires grad so that A is in the graph (the weights are frozen)
        score = probe.forward(x[None].clone().requires_grad_(True))[0, target]
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(score, saved[0])
    return saved[0][0].detach(), g[0]


def gradcam_pp(probe: Probe, x: torch.Tensor, target: int, layer: Layer) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19 with the exponential score): pixel weights
    alpha = g^2 / (2 g^2 + sum(A) g^3), channel weights sum(alpha * ReLU(g))."""
    a, g = _activation_and_gradient(probe, x, target, layer)
    denom = 2 * g**2 + a.sum((1, 2), keepdim=True) * g**3
    alpha = g**2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    weights = (alpha * g.relu()).sum((1, 2))
    return (weights[:, None, None] * a).sum(0).relu()


@torch.no_grad()
def scorecam_all(probe: Probe, x: torch.Tensor, targets: list[int], layer: Layer,
                 batch: int = 64) -> list[torch.Tensor]:
    """Score-CAM (Wang et al. 2020) for several classes at once: each channel, upsampled and scaled to
    [0, 1], masks the image; a channel's weight is the softmax over channels of the class logits the
    masked images get (as pytorch-grad-cam does). Gradient-free, one forward pass per channel, shared by
    all targets; constant channels carry no location and are skipped (weight 0)."""
    (a,) = probe.capture(x[None], [layer])
    a = a[0]
    up = F.interpolate(a[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    live = (hi - lo).flatten() > 1e-6
    if not live.any():
        return [torch.zeros(a.shape[1:]) for _ in targets]
    masks = (up[live] - lo[live]) / (hi - lo)[live]
    logits = torch.cat([probe.forward(x[None] * m[:, None]) for m in masks.split(batch)])  # (K_live, classes)
    maps = []
    for t in targets:
        weights = logits[:, t].softmax(0)
        maps.append((weights[:, None, None] * a[live]).sum(0).relu())
    return maps


def cams(kind: str, probe: Probe, x: torch.Tensor, targets: list[int], layer: Layer) -> list[torch.Tensor]:
    """The maps of one CAM kind for several classes of one image (Score-CAM shares its forward passes)."""
    if kind == "scorecam":
        return scorecam_all(probe, x, targets, layer)
    return [CAM_FUNCTIONS[kind](probe, x, t, layer) for t in targets]


CAM_FUNCTIONS = {"gradcam": gradcam, "gradcam++": gradcam_pp}  # Score-CAM: scorecam_all, all classes at once


def _short(name: str, n: int = 21) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def row(probe: Probe, kind: str, x: torch.Tensor, name: str, label: int | None, layer: Layer,
        patch: int | None, stride: int | None, size: int, cmap: str) -> Image.Image:
    """One photo: the photo as the model sees it, then the map(s) over it."""
    xin = probe.to_input(x[None])[0]
    with torch.no_grad():
        p = probe.probs(xin[None])[0]
    pred = int(p.argmax())
    tiles = [sheet.caption(sheet.tile(sheet.to_pil(xin), size, smooth=True), f"{_short(name)}\n{describe(p, label, chr(10))}",
                           above=False, font=sheet.SMALL)]
    if kind == "occlusion":
        target = pred if label is None else label
        m = occlusion(probe, xin, target, patch, stride)
        tiles.append(sheet.caption(sheet.overlay(xin, m.clamp(min=0), size, cmap),
                                   f"drop in p({CLASSES[target]})\nmax {float(m.max()):.2f}", above=False,
                                   font=sheet.SMALL))
    else:
        which = [("pred", pred)] + ([("true", label)] if label is not None else [])
        for (w, c), m in zip(which, cams(kind, probe, xin, [c for _, c in which], layer)):
            tiles.append(sheet.caption(sheet.overlay(xin, m, size, cmap), f"{w}: {CLASSES[c]}\n"
                                       f"{TITLES[kind]}", above=False, font=sheet.SMALL))
    return sheet.stack(tiles, horizontal=True, gap=4)


def panel(probe: Probe, kind: str, photos: Photos, layer: Layer | None = None, patch: int | None = None,
          stride: int | None = None, size: int = 128, cmap: str = "jet") -> Image.Image:
    """Occlusion or a CAM for every photo, one row each, under a title line."""
    layer = layer or probe.last()
    rows = [row(probe, kind, x, n, lab, layer, patch, stride, size, cmap)
            for x, n, lab in zip(photos.x, photos.names, photos.labels)]
    if kind == "occlusion":
        patch, stride = patch_and_stride(probe.input_size, patch, stride)
        how = f"grey {patch}x{patch} patch, stride {stride}, at {probe.input_size} px; true class if known"
    else:
        c, h, w = layer.shape
        how = f"layer {layer.name} ({h}x{w}x{c}), predicted and true class"
    head = sheet.caption(Image.new("RGB", (1, 1), sheet.PAPER), f"{probe.label}: {TITLES[kind]}, {how}")
    return sheet.stack([head, *rows], gap=6)
