"""Keras `ImageDataGenerator` augmentation, re-done batched on tensors.

One `F.affine_grid` + `F.grid_sample` call warps the whole batch (one theta per sample), so it runs on
whatever device the batch lives on. The study's IMP2 generator is

    ImageDataGenerator(rotation_range=20, width_shift_range=0.1, height_shift_range=0.1,
                       zoom_range=[0.8, 1.3], channel_shift_range=0.2, horizontal_flip=True)

    == AugmentConfig(rotation=20, width_shift=0.1, height_shift=0.1, zoom=(0.8, 1.3),
                     channel_shift=0.2, hflip=True, fill="nearest")

| Keras argument            | here                 | what this code does                                              |
|---------------------------|----------------------|------------------------------------------------------------------|
| rotation_range=r          | rotation=r           | angle ~ U(-r, r) degrees about the centre; + = counter-clockwise |
| width_shift_range=w (<1)  | width_shift=w        | tx ~ U(-w, w) * W pixels; + moves content right                  |
| height_shift_range=h (<1) | height_shift=h       | ty ~ U(-h, h) * H pixels; + moves content down                   |
| zoom_range=[lo, hi]       | zoom=(lo, hi)        | zx, zy ~ U(lo, hi) independently; z > 1 zooms out (content 1/z)  |
| shear_range               | -                    | not supported (the study does not use it)                        |
| channel_shift_range=c     | channel_shift=c      | one s ~ U(-c, c) added to all channels, clipped to the image's   |
|                           |                      | own [min, max] (taken after the warp, as Keras does)             |
| horizontal_flip=True      | hflip=True           | mirror left-right with p = 0.5, applied last                     |
| fill_mode='nearest'       | fill='nearest'       | grid_sample padding_mode='border'                                |
| fill_mode='constant'      | fill='constant'      | padding_mode='zeros' (Keras cval=0)                              |
| fill_mode='reflect'       | fill='reflect'       | padding_mode='reflection' (align_corners=False: about the edge)  |
| interpolation order=1     | (fixed)              | mode='bilinear', align_corners=False                             |

Keras composes `rotation @ shift @ zoom` about the image centre and uses it to map OUTPUT pixels to
INPUT pixels (inverse sampling); `affine_theta` builds exactly that, in (x=column, y=row) pixel
coordinates, then rescales to grid_sample's [-1, 1]. Keras' own axis naming is muddled (its `tx` comes
from height_shift_range but, after its row/column swap, moves columns) and its shift sign is the
opposite of ours; every range is symmetric, so the distribution of augmented images is the same.
Order as in `ImageDataGenerator.apply_transform`: affine warp, then channel shift, then flip.

The settings are `cifarlab.config.AugmentConfig` (a config's `augment` section, plain data checked there),
imported here so that `cifarlab.data.augment.AugmentConfig` names the same class.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cifarlab.config import AugmentConfig, Config

PADDING = {"nearest": "border", "constant": "zeros", "reflect": "reflection"}  # fill -> grid_sample


def augment_config(cfg: Config) -> AugmentConfig:
    """A run config's `augment` section: already the AugmentConfig this module applies."""
    return cfg.augment


def sample_params(n: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-sample parameters on CPU: angle (deg), tx, ty (fractions), zx, zy, flip (bool), shift.

    All seven columns are always drawn, so enabling one transform does not change the others' draws.
    """
    u = torch.rand(n, 7, generator=generator, dtype=torch.float64)
    sym = lambda col, r: (2 * u[:, col] - 1) * r  # U(-r, r)
    lo, hi = cfg.zoom
    return {
        "angle": sym(0, cfg.rotation),
        "tx": sym(1, cfg.width_shift),
        "ty": sym(2, cfg.height_shift),
        "zx": lo + (hi - lo) * u[:, 3],
        "zy": lo + (hi - lo) * u[:, 4],
        "flip": (u[:, 5] < 0.5) & cfg.hflip,
        "shift": sym(6, cfg.channel_shift),
    }


def affine_theta(params: dict[str, torch.Tensor], h: int, w: int) -> torch.Tensor:
    """(N, 2, 3) float64 theta for `F.affine_grid(align_corners=False)`: Keras' rotation @ shift @ zoom.

    Built in centred pixel coordinates (x = column, y = row, y pointing down) so rotation stays a
    rotation on non-square images, then conjugated into grid_sample's [-1, 1] coordinates.
    """
    a = torch.deg2rad(params["angle"].double())
    n = a.shape[0]
    cos, sin, zero, one = a.cos(), a.sin(), torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    mat = lambda *rows: torch.stack([torch.stack(r, -1) for r in rows], -2)  # (N, 3, 3)
    # input = R @ (Z @ out - t): content moves by +t, and with y down this R turns content counter-clockwise
    rot = mat((cos, -sin, zero), (sin, cos, zero), (zero, zero, one))
    shift = mat((one, zero, -params["tx"].double() * w), (zero, one, -params["ty"].double() * h), (zero, zero, one))
    zoom = mat((params["zx"].double(), zero, zero), (zero, params["zy"].double(), zero), (zero, zero, one))
    to_pix = torch.diag(torch.tensor([w / 2, h / 2, 1.0], dtype=torch.float64))  # align_corners=False
    to_norm = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], dtype=torch.float64))
    return (to_norm @ rot @ shift @ zoom @ to_pix)[:, :2]


def warp(x: torch.Tensor, theta: torch.Tensor, fill: str = "nearest") -> torch.Tensor:
    """Inverse-sample x through per-sample thetas in one grid_sample call (bilinear = Keras order=1)."""
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=PADDING[fill], align_corners=False)


def channel_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Add one value per image to every channel, clipped to that image's own [min, max] (Keras)."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    s = shift.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    return torch.minimum(torch.maximum(x + s, lo), hi)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None,
                  flip: torch.Tensor | None = None) -> torch.Tensor:
    """Augment float (N, C, H, W) images in [0, 1]; same shape, dtype and device out.

    Parameters are drawn on CPU from `generator`, so a seeded CPU generator is deterministic on any device.
    `flip` (N bools) replaces the random flips, e.g. with `alternating_flips`.
    """
    if not cfg.enabled or x.shape[0] == 0:
        return x
    params = sample_params(x.shape[0], cfg, generator)
    if flip is not None:
        params["flip"] = flip & cfg.hflip  # stays on its device: no host sync per batch on a GPU
    if cfg.translate:  # drawn after the Keras columns so that enabling it leaves their draws alone
        params["translate"] = torch.randint(-cfg.translate, cfg.translate + 1, (x.shape[0], 2), generator=generator)
    return apply_params(x, params, cfg)


def alternating_flips(index: torch.Tensor, n_images: int, epoch: int, seed: int) -> torch.Tensor:
    """airbench's alternating flip: image i (of n_images) is flipped in epoch 1 with p = 0.5 (seeded),
    then in every other epoch after that, so over two epochs every image is seen both ways exactly once."""
    first = torch.rand(n_images, generator=torch.Generator().manual_seed(seed)) < 0.5
    return first[index.cpu()] ^ bool((epoch - 1) % 2)


def translate(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Shift image n by shifts[n] = (dx, dy) pixels with reflect padding: a gather from the padded batch."""
    pad = int(shifts.abs().max()) if len(shifts) else 0
    if pad == 0:
        return x
    n, _, h, w = x.shape
    xp = F.pad(x, (pad,) * 4, mode="reflect")
    shifts = shifts.to(x.device)
    rows = (torch.arange(h, device=x.device) + pad - shifts[:, 1:2]).view(n, 1, h, 1)  # + dy moves content down
    cols = (torch.arange(w, device=x.device) + pad - shifts[:, 0:1]).view(n, 1, 1, w)
    return xp[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1),
              rows, cols]


def apply_params(x: torch.Tensor, p: dict[str, torch.Tensor], cfg: AugmentConfig) -> torch.Tensor:
    """Apply given parameters (from `sample_params`, or hand-built in tests); cfg gates which steps run."""
    if cfg.geometric:
        x = warp(x, affine_theta(p, x.shape[-2], x.shape[-1]), cfg.fill)
    if cfg.channel_shift:
        x = channel_shift(x, p["shift"])
    if "translate" in p:
        x = translate(x, p["translate"])
    if cfg.hflip:
        x = torch.where(p["flip"].to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def preview_grid(images: torch.Tensor, cfg: AugmentConfig, n_aug: int = 8, scale: int = 3, seed: int = 0) -> Image.Image:
    """One row per uint8 (N, 3, H, W) image: the original, then n_aug augmentations; 2-px white gaps."""
    gen = torch.Generator().manual_seed(seed)
    x = images.float().div(255)
    tiles = [images] + [augment_batch(x, cfg, gen).mul(255).round().clamp(0, 255).to(torch.uint8) for _ in range(n_aug)]
    t = torch.stack(tiles, 1).cpu()  # (N, cols, 3, H, W)
    t = F.pad(t, (0, 2, 0, 2), value=255)  # white gap right of and below every tile
    n, cols, c, h, w = t.shape
    grid = t.permute(0, 3, 1, 4, 2).reshape(n * h, cols * w, c)[:-2, :-2]  # drop the outer gaps
    img = Image.fromarray(np.ascontiguousarray(grid.numpy()))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)
