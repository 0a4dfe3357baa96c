"""Time to accuracy: validation accuracy against wall-clock time for a preset (default: `fast`).

Trains with cifarlab's own `fit` (what `cifarlab train` runs), then reads the run's history: each
epoch's seconds include its validation pass, and the last epoch's validation uses the preset's
test-time augmentation, so the final point is the run's reported accuracy. Data decoding (cached
after the first run) is timed separately and not counted.

    python benchmarks/time_to_accuracy.py --data ../shared/data/cifar10-jpeg.tar.gz \
        [--preset fast] [--epochs N] [--set key=value ...] [--out benchmarks/results/tta_fast]

Writes OUT.json (settings, machine, per-epoch curve, time to each target) and OUT.png, and prints a
Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from cifarlab.config import resolve_config
from cifarlab.data import load_cifar10
from cifarlab.train import fit

from _meta import loadavg, run_meta

TARGETS = (0.884, 0.94)  # the study's best from-scratch model (IMP2, 88.4 %), airbench94's 94 %


def run(args: argparse.Namespace) -> dict:
    cfg = resolve_config(args.preset, args.set, epochs=args.epochs, seed=args.seed, device=args.device)
    t0 = time.perf_counter()
    data = load_cifar10(args.data)
    load_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        metrics = fit(cfg, data, Path(tmp) / "run", quiet=args.quiet)
        wall = time.perf_counter() - t0
        history = _history(Path(tmp) / "run")
    elapsed, curve = 0.0, []
    for row in history:
        elapsed += float(row["seconds"])
        curve.append({"epoch": int(row["epoch"]), "seconds": round(elapsed, 1), "val_acc": float(row["val_acc"])})
    reached = {f"{t:.3f}": next((p["seconds"] for p in curve if p["val_acc"] >= t), None) for t in TARGETS}
    return {
        "preset": args.preset, "model": cfg.model, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
        "overrides": args.set, "seed": cfg.seed, "tta": cfg.tta, "device": str(cfg.device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "data": str(args.data), "data_load_seconds": round(load_seconds, 1),
        "fit_wall_seconds": round(wall, 1), "final_val_accuracy": metrics["val_accuracy"],
        "curve": curve, "seconds_to_target": reached,
    }


def _history(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for r in results:
        xs = [0] + [p["seconds"] / 60 for p in r["curve"]]
        ys = [0.1] + [p["val_acc"] for p in r["curve"]]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{r['preset']} ({r['model']}, {r['epochs']} ep)")
    for t in TARGETS:
        ax.axhline(t, ls="--", lw=0.8, color="grey")
        ax.text(0, t, f" {t:.1%}", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0.3, 1.0)
    ax.legend(loc="lower right")
    ax.set_title("CIFAR-10 validation accuracy against wall time")
    FigureCanvasAgg(fig).print_png(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--device", default=None)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/results/time_to_accuracy", help="OUT.json and OUT.png")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    load0 = loadavg()
    result = {**run(args), **run_meta(load0)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot([result], out.with_suffix(".png"))
    print(f"| preset | model | epochs | wall (fit) | final val acc | to 88.4 % | to 94 % |\n|---|---|---|---|---|---|---|")
    fmt = lambda s: "not reached" if s is None else f"{s / 60:.1f} min"
    print(f"| {result['preset']} | {result['model']} | {result['epochs']} | {result['fit_wall_seconds'] / 60:.1f} min | "
          f"{result['final_val_accuracy']:.4f} | {fmt(result['seconds_to_target']['0.884'])} | "
          f"{fmt(result['seconds_to_target']['0.940'])} |")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
