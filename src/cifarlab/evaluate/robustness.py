"""Why do models fail on real photos? Corruption sweeps, the blur hypothesis, calibration, over seeds.

1. Corruption sweep: validation images (optionally a class-balanced subset) under the CIFAR-10-C-style
   corruptions of `cifarlab.data.corruptions`, severities 1-5; mean corruption accuracy (mCA).
2. Blur hypothesis: real photos blurred at full resolution by a Gaussian of sigma = f * width, then
   centre-cropped and resized to 32x32 by one of three resizes (Pillow's antialiased Lanczos, which
   `load_testset` uses; nearest; OpenCV-style bilinear without antialiasing), plus the study's own
   rule (kernel round(w/75)). The other direction: unsharp-masked CIFAR validation images.
3. Calibration: `cifarlab.evaluate.calibration` on the clean validation subset and the photos.
4. Seeds: runs of one preset pool as mean ± std (the grouping of compare.table2_rows).

The photos' blur/crop/resize is `cifarlab.data.photo_sweep`; pooling, tables and the verdict are
`robustness_summary`; the figures are drawn from the results by `cifarlab.report.robustness_figures`.
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

import torch

from cifarlab import CLASSES
from cifarlab.config import is_transfer
from cifarlab.data.corruptions import SEVERITY, SHARPEN_AMOUNTS, SHARPEN_SIGMA, corrupt, sharpen
from cifarlab.data.photo_sweep import RESIZES, PhotoSweep, photo_sweep
from cifarlab.data.testset import TestSet
from cifarlab.errors import UserError
from cifarlab.evaluate.calibration import calibration_report
from cifarlab.evaluate.robustness_summary import (blur_verdict, corruption_rows, long_rows, markdown, pool,
                                                  summary_rows)
from cifarlab.io import write_csv, write_json, write_text
from cifarlab.models.predict import predict_logits
from cifarlab.rundir import RunDir

SOURCE = ("Hendrycks & Dietterich, ICLR 2019; CIFAR parameters of github.com/hendrycks/robustness, "
          "ImageNet-C/create_c/make_cifar_c.py")
RESULT = "robustness"  # RUN_DIR/eval/robustness.json


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


# ---------------------------------------------------------------- evaluating runs

@dataclass
class Model:
    run: Path
    net: torch.nn.Module
    batch: int
    channels_last: bool
    preset: str
    transfer: bool
    tta: str = "none"  # the run's test-time augmentation and autocast, as `evaluate` applies them
    amp: str = "auto"
    result: dict[str, Any] = field(default_factory=dict)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return predict_logits(self.net, x, self.batch, self.channels_last, self.tta, self.amp)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        logits = self.logits(x)
        return (logits.argmax(1) == y).float().mean().item(), logits


def load_models(run_dirs: list[Path], checkpoint: str = "last") -> list[Model]:
    models = []
    for run in map(Path, run_dirs):
        rd = RunDir(run)
        if not rd.checkpoint(checkpoint).is_file():
            raise UserError(f"{run}: not a trained run directory (no {checkpoint}.pt)")
        net, cfg = rd.load_model(checkpoint)
        models.append(Model(run, net, cfg.eval_batch_size, cfg.channels_last, cfg.preset or cfg.model,
                            is_transfer(cfg), cfg.tta, cfg.amp))
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
            logits = m.logits(ps.x[s])
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
                   data_source: str = "", testset: TestSet | str | Path | None = None, corruptions: list[str] = (),
                   severities: list[int] = (1, 2, 3, 4, 5), limit: int | None = None,
                   resizes: tuple[str, ...] = RESIZES, do_sharpen: bool = True, do_calibration: bool = True,
                   checkpoint: str = "last", seed: int = 0,
                   say: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> list[dict]:
    """Evaluate every run; writes RUN_DIR/eval/robustness.json and robustness_*.csv; returns the results.
    `testset`: the photos of the blur sweep, a folder or a loaded TestSet (its photos are read again at
    full resolution)."""
    models = load_models(run_dirs, checkpoint)
    ps = None
    if testset:
        t0 = time.perf_counter()
        ps = photo_sweep(testset, resizes)
        say(f"photos: {len(ps.y)} from {ps.root} at {len(ps.settings)} blur/resize settings "
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
    rd = RunDir(run)
    out = rd.eval_dir
    out.mkdir(exist_ok=True)
    write_json(rd.eval_json(RESULT), res)
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
    path = RunDir(run).eval_json(RESULT)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{path}: unreadable; run cifarlab robustness again") from None
    return obj if isinstance(obj, dict) else None


# ---------------------------------------------------------------- cross-run outputs

def write_outputs(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """Cross-run CSVs and summary.md in out/; returns what was written. The plots are the report
    layer's (cifarlab.report.robustness_figures.write_figures)."""
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
    return written

