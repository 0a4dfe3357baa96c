"""The blur hypothesis's inputs: real photos blurred at full resolution, centre-cropped and resized to 32x32.

The blur is a Gaussian of sigma = f * width (BLUR_LEVELS), or the study's own rule (kernel round(w/75));
the resize is one of three (Pillow's antialiased Lanczos, which `load_testset` uses; nearest;
OpenCV-style bilinear without antialiasing).

Blur, crop and resize are all linear and separable, so each photo becomes A_h @ photo @ A_w^T with
32 x H and 32 x W matrices (rounded to 8 bits between the passes, as Pillow does): exact full-resolution
blurs of any width for the cost of two small matrix products (a 70-px sigma on a 1500-px photo would
otherwise be a 430-tap convolution).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifarlab.data.testset import (TestSet, UnreadablePhoto, blur_kernel_length, blur_kernel_size, blur_sigma,
                                   gaussian_taps, list_testset, load_photo)
from cifarlab.errors import UserError

BLUR_LEVELS = (0.0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.024, 0.032, 0.048)  # sigma / photo width
RESIZES = ("antialias", "nearest", "bilinear")


def level_name(frac: float) -> str:
    return f"{frac:g}"


def _lanczos(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t.abs() < 3, torch.sinc(t) * torch.sinc(t / 3), torch.zeros_like(t))


def resize_matrix(n_in: int, n_out: int, method: str) -> torch.Tensor:
    """(n_out, n_in) float64: antialias = Pillow's LANCZOS (support scaled by the shrink factor,
    clipped at the borders and renormalised); nearest = Pillow's NEAREST (floor((i + .5) * scale));
    bilinear = OpenCV's INTER_LINEAR / torch bilinear without antialias (two taps, half-pixel centres)."""
    scale, i = n_in / n_out, torch.arange(n_out, dtype=torch.float64)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    if method == "nearest":
        m[rows, ((i + 0.5) * scale).floor().long().clamp(max=n_in - 1)] = 1
    elif method == "bilinear":
        src = ((i + 0.5) * scale - 0.5).clamp(min=0)
        x0 = src.floor().long().clamp(max=n_in - 1)
        w1 = src - x0
        m[rows, x0] += 1 - w1
        m[rows, (x0 + 1).clamp(max=n_in - 1)] += w1
    elif method == "antialias":
        fs = max(scale, 1.0)
        center, j = (i + 0.5) * scale, torch.arange(n_in, dtype=torch.float64)
        lo, hi = (center - 3 * fs + 0.5).floor().clamp(min=0), (center + 3 * fs + 0.5).floor().clamp(max=n_in)
        inside = (j[None] >= lo[:, None]) & (j[None] < hi[:, None])
        m = _lanczos((j[None] - center[:, None] + 0.5) / fs) * inside
        m = m / m.sum(1, keepdim=True)
    else:
        raise UserError(f"--resize must be among {', '.join(RESIZES)}, got '{method}'")
    return m


def _reflect101(idx: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return torch.zeros_like(idx)
    idx = idx % (2 * n - 2)
    return torch.where(idx >= n, 2 * n - 2 - idx, idx)


def blurred_operator(m: torch.Tensor, taps: torch.Tensor | None) -> torch.Tensor:
    """m @ B for B the full-resolution blur by 1-D taps with reflect-101 borders (OpenCV's default),
    without forming B: spread each column of m over its neighbours (a convolution of m's rows), then
    fold the columns that fell off an edge back onto their reflections."""
    if taps is None or len(taps) == 1:
        return m
    n, p = m.shape[1], len(taps) // 2
    # full linear convolution by FFT: long kernels (400+ taps) cost no more than short ones
    size = 1 << (n + 2 * p - 1).bit_length()  # a power of two >= n + 2p: no wrap-around, fastest FFT
    spread = torch.fft.irfft(torch.fft.rfft(m, size) * torch.fft.rfft(taps.double(), size), size)[:, :n + 2 * p]
    return torch.zeros_like(m).index_add_(1, _reflect101(torch.arange(n + 2 * p) - p, n), spread)


def _axis_operator(full: int, start: int, side: int, method: str, taps: torch.Tensor | None) -> torch.Tensor:
    m = torch.zeros(32, full, dtype=torch.float64)
    m[:, start:start + side] = resize_matrix(side, 32, method)  # centre crop, then resize
    return blurred_operator(m, taps)


def sigma_taps(sigma: float) -> torch.Tensor | None:
    """Gaussian taps over +-3 sigma (OpenCV's kernel size for a given sigma); None below 0.2 px."""
    if sigma < 0.2:
        return None
    return gaussian_taps(2 * math.ceil(3 * sigma) + 1, sigma)


def study_taps(width: int) -> torch.Tensor | None:
    """The study's filter (cifarlab.data.testset.study_blur): s = round(w / 75), OpenCV's sigma."""
    s = blur_kernel_size(width)
    if s <= 1:
        return None
    k = blur_kernel_length(s)
    return gaussian_taps(k, blur_sigma(k))


def study_sigma_fraction(width: int) -> float:
    s = blur_kernel_size(width)
    return blur_sigma(blur_kernel_length(s)) / width if s > 1 else 0.0


def prepare_photo_sweep(photo: torch.Tensor, settings: list[tuple[str, str]]) -> torch.Tensor:
    """photo: float (H, W, 3); settings: (resize, level name or 'study'). Returns uint8 (S, 3, 32, 32)."""
    h, w = photo.shape[:2]
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2  # fit_square's centre crop
    ah, aw = [], []
    for method, level in settings:
        taps = study_taps(w) if level == "study" else sigma_taps(float(level) * w)
        ah.append(_axis_operator(h, top, side, method, taps))
        aw.append(_axis_operator(w, left, side, method, taps))
    # horizontal pass first, rounded to 8 bits, then vertical: Pillow's order (matches its Lanczos to +-1)
    cols = torch.einsum("hwc,spw->shpc", photo, torch.stack(aw).float()).round_().clamp_(0, 255)
    out = torch.einsum("soh,shpc->scop", torch.stack(ah).float(), cols)
    return out.round().clamp(0, 255).to(torch.uint8)


@dataclass
class PhotoSweep:
    settings: list[tuple[str, str]]
    x: torch.Tensor  # uint8 (S, N, 3, 32, 32)
    y: torch.Tensor
    paths: list[str]
    skipped: list[tuple[str, str]]
    study_fraction: float  # median sigma / width of the study's rule over these photos
    root: str = ""


def photo_sweep(testset: TestSet | str | Path, resizes: tuple[str, ...] = RESIZES,
                levels: tuple[float, ...] = BLUR_LEVELS) -> PhotoSweep:
    """Every photo of the test set (a folder root/<class>/, or a loaded TestSet: its readable photos,
    not listed again) at every (resize, blur level) and the study's rule, from the full-size photo."""
    settings = [(r, lv) for r in resizes for lv in [*map(level_name, levels), "study"]]
    for r in resizes:
        resize_matrix(64, 32, r)  # bad names fail before any decoding
    if isinstance(testset, TestSet):
        root, files, skipped = testset.root, list(zip(testset.paths, testset.y.tolist())), list(testset.skipped)
    else:
        root, files, skipped = testset, list_testset(testset), []
    xs, ys, paths, fracs = [], [], [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: thread barriers cost more than they save (10-100x on a busy machine)
    try:
        for rel, label in files:
            try:
                img = load_photo(Path(root) / rel)
            except UnreadablePhoto as e:
                skipped.append((rel, e.reason))
                continue
            xs.append(prepare_photo_sweep(torch.from_numpy(np.asarray(img, dtype=np.float32)), settings))
            ys.append(label)
            paths.append(rel)
            fracs.append(study_sigma_fraction(img.width))
    finally:
        torch.set_num_threads(threads)
    if not xs:
        raise UserError(f"{root}: no readable photos")
    return PhotoSweep(settings, torch.stack(xs, 1), torch.tensor(ys), paths, skipped,
                      statistics.median(fracs), str(root))
