"""Why do models fail on real photos? Corruption sweeps, the blur hypothesis, calibration, over seeds.

1. Corruption sweep: validation images (optionally a class-balanced subset) under the CIFAR-10-C-style
   corruptions of `cifarlab.data.corruptions`, severities 1-5; mean corruption accuracy (mCA).
2. Blur hypothesis: real photos blurred at full resolution by a Gaussian of sigma = f * width, then
   centre-cropped and resized to 32x32 by one of three resizes (Pillow's antialiased Lanczos, which
   `load_testset` uses; nearest; OpenCV-style bilinear without antialiasing), plus the study's own
   rule (kernel round(w/75)). The other direction: unsharp-masked CIFAR validation images.
3. Calibration: `cifarlab.evaluate.calibration` on the clean validation subset and the photos.
4. Seeds: runs of one preset pool as mean ± std (the grouping of compare.table2_rows).

Blur, crop and resize are all linear and separable, so each photo becomes A_h @ photo @ A_w^T with
32 x H and 32 x W matrices (rounded to 8 bits between the passes, as Pillow does): exact full-resolution blurs of any width for the cost of two small
matrix products (a 70-px sigma on a 1500-px photo would otherwise be a 430-tap convolution).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cifarlab import CLASSES
from cifarlab.config import is_transfer
from cifarlab.data.corruptions import SEVERITY, SHARPEN_AMOUNTS, SHARPEN_SIGMA, corrupt, sharpen
from cifarlab.data.testset import (UnreadablePhoto, blur_kernel_length, blur_kernel_size, blur_sigma,
                                   gaussian_taps, list_testset, load_photo)
from cifarlab.errors import UserError
from cifarlab.evaluate.calibration import calibration_report
from cifarlab.evaluate.metrics import load_run_model
from cifarlab.io import write_csv, write_json, write_text
from cifarlab.train.loop import predict_logits

BLUR_LEVELS = (0.0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.024, 0.032, 0.048)  # sigma / photo width
RESIZES = ("antialias", "nearest", "bilinear")
SOURCE = ("Hendrycks & Dietterich, ICLR 2019; CIFAR parameters of github.com/hendrycks/robustness, "
          "ImageNet-C/create_c/make_cifar_c.py")
RESULT_FILE = "robustness.json"


def level_name(frac: float) -> str:
    return f"{frac:g}"


# ---------------------------------------------------------------- subsets

def balanced_subset(y: torch.Tensor, limit: int | None) -> torch.Tensor:
    """Indices of a fixed class-balanced subset: the first limit/10 images of each class, in order
    (the first classes take one more when limit is not a multiple of 10); all images if None."""
    if limit is None or limit >= len(y):
        return torch.arange(len(y))
    if limit < 1:
        raise UserError(f"--limit must be positive, got {limit}")
    k = len(CLASSES)
    idx = [torch.nonzero(y == c).flatten()[: limit // k + (c < limit % k)] for c in range(k)]
    return torch.cat(idx).sort().values


# ---------------------------------------------------------------- photos: blur, crop, resize as matrices

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


def photo_sweep(root: str | Path, resizes: tuple[str, ...] = RESIZES,
                levels: tuple[float, ...] = BLUR_LEVELS) -> PhotoSweep:
    """Every photo under root/<class>/ at every (resize, blur level) and the study's rule."""
    settings = [(r, lv) for r in resizes for lv in [*map(level_name, levels), "study"]]
    for r in resizes:
        resize_matrix(64, 32, r)  # bad names fail before any decoding
    files = list_testset(root)
    xs, ys, paths, skipped, fracs = [], [], [], [], []
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


# ---------------------------------------------------------------- evaluating runs

@dataclass
class Model:
    run: Path
    net: torch.nn.Module
    batch: int
    channels_last: bool
    preset: str
    transfer: bool
    result: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        logits = predict_logits(self.net, x, self.batch, self.channels_last)
        return (logits.argmax(1) == y).float().mean().item(), logits


def load_models(run_dirs: list[Path], checkpoint: str = "last") -> list[Model]:
    models = []
    for run in map(Path, run_dirs):
        if not (run / f"{checkpoint}.pt").is_file():
            raise UserError(f"{run}: not a trained run directory (no {checkpoint}.pt)")
        net, cfg = load_run_model(run, checkpoint)
        models.append(Model(run, net, cfg.eval_batch_size, cfg.channels_last, cfg.preset or cfg.model,
                            is_transfer(cfg)))
    return models


def _paired_gain(base_ok: torch.Tensor, ok: torch.Tensor) -> tuple[float, float]:
    """Accuracy gain over the unblurred photos and its paired standard error (same photos)."""
    d = ok.float() - base_ok.float()
    return d.mean().item(), (d.std().item() / math.sqrt(len(d))) if len(d) > 1 else float("nan")


def sweep_corruptions(models: list[Model], x: torch.Tensor, y: torch.Tensor, corruptions: list[str],
                      severities: list[int], seed: int, say: Callable[[str], None]) -> dict[Path, dict]:
    """Accuracy per corruption and severity; each corrupted batch is made once, for every model."""
    res: dict[Path, dict] = {m.run: {"accuracy": {}} for m in models}
    logits = {}
    for m in models:
        res[m.run]["clean"], logits[m.run] = m.accuracy(x, y)
    for name in corruptions:
        t0 = time.perf_counter()
        for sev in severities:
            xc = corrupt(x, name, sev, seed)
            for m in models:
                res[m.run]["accuracy"].setdefault(name, {})[str(sev)] = round(m.accuracy(xc, y)[0], 5)
        say(f"  {name}: severities {','.join(map(str, severities))} done in {time.perf_counter() - t0:.0f} s")
    for m in models:
        accs = [a for per in res[m.run]["accuracy"].values() for a in per.values()]
        res[m.run]["mean_corruption_accuracy"] = round(statistics.mean(accs), 5) if accs else None
        res[m.run]["clean"] = round(res[m.run]["clean"], 5)
        res[m.run]["_logits"] = logits[m.run]
    return res


def sweep_sharpen(models: list[Model], x: torch.Tensor, y: torch.Tensor) -> dict[Path, dict]:
    out: dict[Path, dict] = {m.run: {"sigma": SHARPEN_SIGMA, "accuracy": {}} for m in models}
    for amount in SHARPEN_AMOUNTS:
        xs = sharpen(x, amount)
        for m in models:
            out[m.run]["accuracy"][f"{amount:g}"] = round(m.accuracy(xs, y)[0], 5)
    return out


def sweep_blur(models: list[Model], ps: PhotoSweep) -> dict[Path, dict]:
    out: dict[Path, dict] = {}
    for m in models:
        acc: dict[str, dict[str, float]] = {}
        gain: dict[str, dict[str, list[float]]] = {}
        ok: dict[tuple[str, str], torch.Tensor] = {}
        logits0 = None
        for s, (method, level) in enumerate(ps.settings):
            logits = predict_logits(m.net, ps.x[s], m.batch, m.channels_last)
            ok[(method, level)] = logits.argmax(1) == ps.y
            acc.setdefault(method, {})[level] = round(ok[(method, level)].float().mean().item(), 5)
            if (method, level) == ("antialias", "0"):
                logits0 = logits  # the pipeline of load_testset: the calibration's real-world logits
        for method, level in ps.settings:
            g, se = _paired_gain(ok[(method, "0")], ok[(method, level)])
            gain.setdefault(method, {})[level] = [round(g, 5), round(se, 5)]
        out[m.run] = {"testset": ps.root, "n": len(ps.y), "n_skipped": len(ps.skipped),
                      "study_sigma_fraction": round(ps.study_fraction, 6), "accuracy": acc,
                      "gain_and_paired_se": gain, "_logits": logits0}
    return out


def run_robustness(run_dirs: list[Path], *, val_x: torch.Tensor | None = None, val_y: torch.Tensor | None = None,
                   data_source: str = "", testset: str | Path | None = None, corruptions: list[str] = (),
                   severities: list[int] = (1, 2, 3, 4, 5), limit: int | None = None,
                   resizes: tuple[str, ...] = RESIZES, do_sharpen: bool = True, do_calibration: bool = True,
                   checkpoint: str = "last", seed: int = 0,
                   say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> list[dict]:
    """Evaluate every run; writes RUN_DIR/eval/robustness.json and robustness_*.csv; returns the results."""
    models = load_models(run_dirs, checkpoint)
    ps = None
    if testset:
        t0 = time.perf_counter()
        ps = photo_sweep(testset, resizes)
        say(f"photos: {len(ps.y)} from {testset} at {len(ps.settings)} blur/resize settings "
            f"({time.perf_counter() - t0:.0f} s)")
    results = {m.run: {"run": str(m.run), "preset": m.preset, "transfer": m.transfer, "checkpoint": checkpoint}
               for m in models}
    if val_x is not None:
        idx = balanced_subset(val_y, limit)
        x, y = val_x[idx].contiguous(), val_y[idx]
        subset = {"n": len(y), "subset": "all validation images" if len(y) == len(val_y) else
                  f"first {len(y) // len(CLASSES)} validation images of each class (fixed, class-balanced)",
                  "data": data_source, "seed": seed, "source": SOURCE,
                  "params": {n: list(SEVERITY[n]) for n in corruptions}}
        say(f"validation: {len(y)} images; corruptions: {', '.join(corruptions) or 'none'}")
        for run, r in sweep_corruptions(models, x, y, list(corruptions), list(severities), seed, say).items():
            results[run]["corruptions"] = {**subset, **r}
        if do_sharpen:
            for run, r in sweep_sharpen(models, x, y).items():
                results[run]["sharpen"] = {"n": len(y), **r}
    if ps is not None:
        for run, r in sweep_blur(models, ps).items():
            results[run]["blur"] = r
    if do_calibration and val_x is not None:
        for m in models:
            real = results[m.run].get("blur", {}).get("_logits")
            results[m.run]["calibration"] = calibration_report(results[m.run]["corruptions"]["_logits"], y,
                                                               real, ps.y if ps is not None else None)
    for m in models:
        results[m.run] = merge_results(load_results(m.run), results[m.run])
        write_run_results(m.run, results[m.run])
    return [results[m.run] for m in models]


def merge_results(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Results accumulate: parts not computed now (e.g. --no-sharpen, no --testset) are kept from the
    last run of the same checkpoint, and so are corruptions not swept now when the validation subset
    and seed are the same; mCA is recomputed over them all."""
    if not old or old.get("checkpoint") != new.get("checkpoint"):
        return new
    out = {**{k: v for k, v in old.items() if k in ("corruptions", "sharpen", "blur", "calibration")}, **new}
    oc, nc = old.get("corruptions"), new.get("corruptions")
    if oc and nc and all(oc.get(k) == nc.get(k) for k in ("n", "subset", "data", "seed")):
        nc["accuracy"] = {**oc["accuracy"], **nc["accuracy"]}
        nc["params"] = {**oc.get("params", {}), **nc["params"]}
        accs = [a for per in nc["accuracy"].values() for a in per.values()]
        nc["mean_corruption_accuracy"] = round(statistics.mean(accs), 5) if accs else None
    return out


def write_run_results(run: Path, res: dict[str, Any]) -> None:
    for part in ("corruptions", "blur"):
        res.get(part, {}).pop("_logits", None)
    out = Path(run) / "eval"
    out.mkdir(exist_ok=True)
    write_json(out / RESULT_FILE, res)
    c = res.get("corruptions")
    if c:
        rows = [{"corruption": "clean", "severity": 0, "param": "", "accuracy": c["clean"]}]
        rows += [{"corruption": n, "severity": s, "param": json.dumps(SEVERITY[n][int(s) - 1]), "accuracy": a}
                 for n, per in c["accuracy"].items() for s, a in per.items()]
        write_csv(out / "robustness_corruptions.csv", rows)
    b = res.get("blur")
    if b:
        write_csv(out / "robustness_blur.csv", [
            {"resize": r, "sigma_over_width": lv, "accuracy": a, "gain": b["gain_and_paired_se"][r][lv][0],
             "gain_paired_se": b["gain_and_paired_se"][r][lv][1]} for r, per in b["accuracy"].items()
            for lv, a in per.items()])
    s = res.get("sharpen")
    if s:
        write_csv(out / "robustness_sharpen.csv", [{"amount": k, "sigma": s["sigma"], "accuracy": a}
                                                   for k, a in s["accuracy"].items()])


def load_results(run: Path) -> dict[str, Any] | None:
    path = Path(run) / "eval" / RESULT_FILE
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path}: unreadable; run cifarlab robustness again") from None
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------- pooling over seeds

def flatten(res: dict[str, Any]) -> dict[str, float]:
    """One run's numbers as flat keys, so any of them pools over seeds the same way."""
    f: dict[str, float] = {}
    c = res.get("corruptions")
    if c:
        f["clean"], f["mca"] = c["clean"], c["mean_corruption_accuracy"]
        sevs: dict[str, list[float]] = {}
        for n, per in c["accuracy"].items():
            for s, a in per.items():
                f[f"c/{n}/{s}"] = a
                sevs.setdefault(s, []).append(a)
            f[f"c/{n}/mean"] = statistics.mean(per.values())
        for s, accs in sevs.items():
            f[f"c/mean/{s}"] = statistics.mean(accs)
    for k, a in (res.get("sharpen") or {}).get("accuracy", {}).items():
        f[f"sharpen/{k}"] = a
    b = res.get("blur")
    if b:
        for r, per in b["accuracy"].items():
            for lv, a in per.items():
                f[f"blur/{r}/{lv}"] = a
                f[f"gain/{r}/{lv}"], f[f"gain_se/{r}/{lv}"] = b["gain_and_paired_se"][r][lv]
        f["study_fraction"] = b["study_sigma_fraction"]
    cal = res.get("calibration")
    if cal:
        f["T"] = cal["temperature"]
        for s, v in cal["sets"].items():
            f[f"ece/{s}/before"], f[f"ece/{s}/after"] = v["ece_before"], v["ece_after"]
    return {k: v for k, v in f.items() if v is not None}


@dataclass
class Pooled:
    label: str
    transfer: bool
    n_runs: int
    mean: dict[str, float]
    std: dict[str, float]  # only keys with 2+ runs
    bins: dict[str, dict[str, dict[str, list[float]]]]  # set -> before/after -> summed bins


def pool(results: list[dict[str, Any]]) -> list[Pooled]:
    """Group runs by preset (as compare.table2_rows does) and pool: mean, std over runs; reliability
    bins summed (exact pooling of the diagram)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r.get("preset") or r.get("run", "?"), []).append(r)
    out = []
    for preset, rs in groups.items():
        flats = [flatten(r) for r in rs]
        keys = [k for k in flats[0] if all(k in f for f in flats)]
        mean = {k: statistics.mean(f[k] for f in flats) for k in keys}
        std = {k: statistics.stdev(f[k] for f in flats) for k in keys if len(flats) > 1}
        out.append(Pooled(preset.upper(), bool(rs[0].get("transfer")), len(rs), mean, std, _sum_bins(rs)))
    return out


def _sum_bins(rs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    total: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in rs:
        for s, v in (r.get("calibration") or {}).get("sets", {}).items():
            for when in ("before", "after"):
                b = v[f"bins_{when}"]
                t = total.setdefault(s, {}).setdefault(when, {k: [0.0] * len(b[k]) for k in b})
                for k in b:
                    t[k] = [x + y for x, y in zip(t[k], b[k])]
    return total


def fmt(p: Pooled, key: str, scale: float = 100.0, digits: int = 1) -> str:
    if key not in p.mean:
        return "—"
    s = f"{p.mean[key] * scale:.{digits}f}"
    return s + (f" ± {p.std[key] * scale:.{digits}f}" if key in p.std else "")


# ---------------------------------------------------------------- the blur verdict

def blur_verdict(pooled: list[Pooled], resize: str) -> str | None:
    """Do from-scratch models gain more from blur than MobileNets? Gains in percentage points at the
    study's rule and at each group's best level, with standard errors."""
    def gains(p: Pooled, level: str) -> tuple[float, float] | None:
        k = f"gain/{resize}/{level}"
        if k not in p.mean:
            return None
        se = math.sqrt(p.mean.get(f"gain_se/{resize}/{level}", 0.0) ** 2 + p.std.get(k, 0.0) ** 2 / p.n_runs)
        return p.mean[k] * 100, se * 100

    levels = sorted({k.split("/")[2] for p in pooled for k in p.mean if k.startswith(f"gain/{resize}/")})
    groups = {"from scratch": [p for p in pooled if not p.transfer], "MobileNet": [p for p in pooled if p.transfer]}
    if not all(groups.values()) or not levels:
        return None
    parts, summary = [], {}
    for name, ps in groups.items():
        at_study = [gains(p, "study") for p in ps]
        best = [max(((gains(p, lv), lv) for lv in levels if lv not in ("0",) and gains(p, lv)),
                    key=lambda t: t[0][0]) for p in ps]
        summary[name] = statistics.mean(g[0] for g in at_study), statistics.mean(b[0][0] for b in best)
        parts.append(f"{name}: " + ", ".join(
            f"{p.label} {s[0]:+.1f} ± {s[1]:.1f} pp at the study's rule, best {b[0][0]:+.1f} pp at σ/w={b[1]}"
            for p, s, b in zip(ps, at_study, best)))
    ses = [gains(p, "study")[1] for p in pooled]
    d_study = summary["from scratch"][0] - summary["MobileNet"][0]
    d_best = summary["from scratch"][1] - summary["MobileNet"][1]
    noise = 2 * math.sqrt(statistics.mean(s ** 2 for s in ses))
    answer = "yes" if d_best > noise else ("no" if d_best < -noise else "not clearly")
    return (f"Resize '{resize}': {'; '.join(parts)}. From-scratch minus MobileNet mean gain: {d_study:+.1f} pp at "
            f"the study's rule, {d_best:+.1f} pp at the best level (noise level, 2 standard errors: ±{noise:.1f} pp). "
            f"Do from-scratch models gain more from blur? {answer}.")


# ---------------------------------------------------------------- figures

def _figure(n_panels: int, cols: int, w: float = 3.6, h: float = 2.9):
    from matplotlib.figure import Figure

    cols = min(cols, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(w * cols, h * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _line(ax, p: Pooled, xs: list[float], keys: list[str], **kw) -> None:
    pts = [(x, p.mean[k], p.std.get(k, 0.0)) for x, k in zip(xs, keys) if k in p.mean]
    if pts:
        x, y, e = zip(*pts)
        ax.errorbar(x, [v * 100 for v in y], yerr=[v * 100 for v in e] if p.n_runs > 1 else None,
                    marker="o", ms=3, capsize=2, ls="--" if p.transfer else "-",
                    label=f"{p.label}" + (f" (n={p.n_runs})" if p.n_runs > 1 else ""), **kw)


def corruption_figure(pooled: list[Pooled]):
    names = sorted({k.split("/")[1] for p in pooled for k in p.mean if k.startswith("c/") and "/mean/" not in k
                    and k.split("/")[1] != "mean"}, key=list(SEVERITY).index)
    fig, axes = _figure(len(names) + 1, 4)
    for ax, name in zip(axes, [*names, "mean"]):
        for p in pooled:
            _line(ax, p, list(range(6)), ["clean"] + [f"c/{name}/{s}" for s in range(1, 6)])
        ax.set(title=name.replace("_", " ") if name != "mean" else "mean over corruptions", xlabel="severity "
               "(0 = clean)", ylabel="accuracy (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def blur_figure(pooled: list[Pooled]):
    resizes = [r for r in RESIZES if any(f"blur/{r}/0" in p.mean for p in pooled)]
    fig, axes = _figure(len(resizes), 3, 4.4, 3.4)
    xs = list(BLUR_LEVELS)
    for ax, r in zip(axes, resizes):
        for p in pooled:
            _line(ax, p, xs, [f"blur/{r}/{level_name(v)}" for v in xs])
            f = p.mean.get("study_fraction")
            if f is not None and f"blur/{r}/study" in p.mean:
                ax.plot([f], [p.mean[f"blur/{r}/study"] * 100], marker="*", ms=11, color=ax.lines[-1].get_color(),
                        ls="none")
        f = next((p.mean["study_fraction"] for p in pooled if "study_fraction" in p.mean), None)
        if f:
            ax.axvline(f, color="grey", ls=":", lw=1, label="study's rule (median σ/w; ★ exact)")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(-1e-4, max(xs) * 1.15)
        ax.set(title=f"resize: {r}", xlabel="Gaussian σ / photo width (blur before resizing)",
               ylabel="accuracy (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
    if resizes:
        axes[0].legend(fontsize="small")
    return fig


def sharpen_figure(pooled: list[Pooled]):
    fig, axes = _figure(1, 1, 4.6, 3.4)
    for p in pooled:
        _line(axes[0], p, list(SHARPEN_AMOUNTS), [f"sharpen/{a:g}" for a in SHARPEN_AMOUNTS])
    axes[0].set(title=f"CIFAR validation, unsharp mask (σ = {SHARPEN_SIGMA:g} px)", xlabel="sharpening amount "
                "(0 = none)", ylabel="accuracy (%)", ylim=(0, 100))
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def reliability_figure(pooled: list[Pooled]):
    ps = [p for p in pooled if p.bins]
    fig, axes = _figure(max(len(ps), 1), 4, 3.3, 3.3)
    for ax, p in zip(axes, ps):
        ax.plot([0, 1], [0, 1], color="grey", lw=1)
        for s, style in (("validation", "-"), ("realworld", "--")):
            for when, color in (("before", "C0"), ("after", "C1")):
                b = p.bins.get(s, {}).get(when)
                if not b:
                    continue
                pts = [(cs / n, c / n) for n, cs, c in zip(b["count"], b["conf_sum"], b["correct"]) if n]
                ax.plot(*zip(*pts), ls=style, marker="o", ms=3, color=color,
                        label=f"{s} {'raw' if when == 'before' else 'T-scaled'}")
        ece = " → ".join(fmt(p, f"ece/validation/{w}", 100, 1) for w in ("before", "after"))
        ax.set(title=f"{p.label}: val ECE {ece} %", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    if ps:
        axes[0].legend(fontsize="x-small")
    return fig


# ---------------------------------------------------------------- tables

def summary_rows(pooled: list[Pooled]) -> list[dict[str, Any]]:
    rows = []
    for p in pooled:
        rows.append({"model": p.label, "runs": p.n_runs, "clean_%": fmt(p, "clean"), "mCA_%": fmt(p, "mca"),
                     "photos_%": fmt(p, "blur/antialias/0"), "photos_study_blur_%": fmt(p, "blur/antialias/study"),
                     "photos_nearest_%": fmt(p, "blur/nearest/0"),
                     "photos_nearest_study_blur_%": fmt(p, "blur/nearest/study"),
                     "T": fmt(p, "T", 1, 2), "ECE_val_%": fmt(p, "ece/validation/before"),
                     "ECE_val_T_%": fmt(p, "ece/validation/after"), "ECE_photos_%": fmt(p, "ece/realworld/before"),
                     "ECE_photos_T_%": fmt(p, "ece/realworld/after")})
    return rows


def long_rows(pooled: list[Pooled], prefix: str) -> list[dict[str, Any]]:
    """Every pooled key under prefix as rows: model, runs, setting, mean, std (accuracy as a fraction)."""
    return [{"model": p.label, "runs": p.n_runs, "setting": k[len(prefix):], "mean": round(v, 5),
             "std": round(p.std[k], 5) if k in p.std else ""}
            for p in pooled for k, v in p.mean.items() if k.startswith(prefix)]


def markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows])


def write_outputs(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """Cross-run CSVs, summary.md and plots in out/; returns what was written."""
    from cifarlab.report.figures import save_png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pooled = pool(results)
    written = []
    for name, prefix in (("corruptions.csv", "c/"), ("blur_sweep.csv", "blur/"), ("blur_gain.csv", "gain/"),
                         ("sharpen.csv", "sharpen/"), ("calibration.csv", "ece/")):
        rows = long_rows(pooled, prefix)
        if rows:
            write_csv(out / name, rows)
            written.append(out / name)
    summary = summary_rows(pooled)
    write_csv(out / "summary.csv", summary)
    verdicts = [v for r in RESIZES if (v := blur_verdict(pooled, r))]
    write_text(out / "summary.md", "Accuracy and ECE in %, mean ± std over runs of a preset where there are "
               "several.\n\n" + markdown(summary) + "\n\nAccuracy under corruption, mean over severities:\n\n"
               + markdown(corruption_rows(pooled)) + "\n\n" + "\n\n".join(verdicts) + "\n")
    written += [out / "summary.csv", out / "summary.md"]
    for name, make, needs, _ in FIGURES:
        if any(needs in p.mean for p in pooled):
            save_png(make(pooled), out / f"{name}.png")
            written.append(out / f"{name}.png")
    return written


def study_robustness(run_dirs: list[Path], cifar: Any, testset: str | None, out: Path, limit: int | None,
                     say: Callable[[str], None]) -> list[Path]:
    """`reproduce`'s hook: every corruption on a validation subset, the blur sweep, calibration, for
    runs whose eval/robustness.json is missing or older than last.pt; then the cross-run outputs."""
    from cifarlab.data.corruptions import CORRUPTIONS

    stale = [Path(r) for r in run_dirs if _stale(Path(r))]
    if stale:
        say(f"robustness: {len(stale)} run(s), {limit or 'all'} validation images")
        run_robustness(stale, val_x=cifar.val_x, val_y=cifar.val_y, data_source=cifar.source, testset=testset,
                       corruptions=list(CORRUPTIONS), limit=limit, say=say)
    return write_outputs([r for r in map(load_results, run_dirs) if r], out)


def _stale(run: Path) -> bool:
    res = run / "eval" / RESULT_FILE
    return not res.is_file() or res.stat().st_mtime < (run / "last.pt").stat().st_mtime


def corruption_rows(pooled: list[Pooled]) -> list[dict[str, Any]]:
    """Model x corruption: accuracy (%) averaged over severities, with clean and mCA."""
    names = [n for n in SEVERITY if any(f"c/{n}/mean" in p.mean for p in pooled)]
    return [{"model": p.label, "runs": p.n_runs, "clean": fmt(p, "clean"),
             **{n.replace("_", " "): fmt(p, f"c/{n}/mean") for n in names}, "mCA": fmt(p, "mca")} for p in pooled]


# (file name, figure function, a key that must exist, caption) for write_outputs and the report
FIGURES = [
    ("corruption_sweep", corruption_figure, "clean", "Accuracy against corruption severity (CIFAR-10-C-style, "
     "validation subset); dashed: ImageNet-pretrained MobileNets; error bars: std over seeds"),
    ("blur_sweep", blur_figure, "study_fraction", "Real photos: accuracy against the Gaussian blur applied at full "
     "resolution before resizing to 32x32, σ relative to the photo's width; ★: the study's rule s = round(w/75)"),
    ("sharpen", sharpen_figure, "sharpen/0", "The other direction: CIFAR validation images sharpened (unsharp mask)"),
    ("reliability", reliability_figure, "T", "Reliability diagrams: accuracy against confidence (15 bins), on the "
     "validation eval half and the real photos, before and after temperature scaling"),
]
