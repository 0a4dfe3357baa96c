"""MobileNet with augmentation: K cached augmented views against true on-the-fly augmentation.

On a class-balanced training subset, MNET1 or MNET2 (study augmentation, preset recipe) is trained E
epochs (a) on the fly: every epoch each image is augmented afresh and goes through the whole frozen
backbone; (b) on K views embedded once (train/viewcache.py), for each K in --views; (c) with no
augmentation. Validation: a class-balanced subset of the CIFAR-10 test split, embedded once. Prints a
Markdown table (accuracy and wall seconds per method) and writes JSON.

    python benchmarks/mnet_views.py --data ../shared/data/cifar10-jpeg.tar.gz \
        --weights ../shared/data/pretrained/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite \
        --preset mnet2 --train 5000 --val 2000 --epochs 10 --views 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cifarlab.config import resolve_config
from cifarlab.data import class_balanced_subset, load_cifar10
from cifarlab.data.augment import augment_config
from cifarlab.models import build_model
from cifarlab.models.predict import evaluate_model
from cifarlab.train import viewcache
from cifarlab.train.loop import train_epoch
from cifarlab.train.progress import Progress
from cifarlab.train.recipe import make_optimizer


def train_and_score(cfg, net, epochs: int, train_data, val_x, val_y) -> tuple[float, float]:
    """Train `net` for `epochs` (train_data(epoch) gives that epoch's (x, y)); (val accuracy, seconds)."""
    opt = make_optimizer(net, cfg)
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        x, y = train_data(epoch)
        train_epoch(net, opt, x, y, cfg, epoch, Progress(1, "", True))
    seconds = time.perf_counter() - t0
    return evaluate_model(net, val_x, val_y, 500)[1], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--preset", default="mnet2", choices=["mnet1", "mnet2"])
    ap.add_argument("--train", type=int, default=5000, help="class-balanced training images")
    ap.add_argument("--val", type=int, default=2000, help="class-balanced validation images")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--no-fly", action="store_true", help="skip the (slow) on-the-fly baseline")
    ap.add_argument("--out", default="benchmarks/results/mnet_views.json")
    args = ap.parse_args()

    cifar = load_cifar10(args.data, progress=False)
    keep = class_balanced_subset(cifar.train_y, args.train, seed=0)
    vkeep = class_balanced_subset(cifar.val_y, args.val, seed=0)
    tx, ty, vx, vy = cifar.train_x[keep], cifar.train_y[keep], cifar.val_x[vkeep], cifar.val_y[vkeep]
    drop = max(1, round(args.epochs * 0.7))
    cfg = resolve_config(args.preset, [f"epochs={args.epochs}", f"lr_drops=[[{drop}, 0.1]]", f"weights={args.weights}"])
    aug = augment_config(cfg)
    device = torch.device("cpu")
    fresh = lambda: build_model(cfg, device)
    results = []
    print(f"{args.preset}, {args.train} training / {args.val} validation images, {args.epochs} epochs (drop after "
          f"{drop}), {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}\n")
    print("| method | embedding s | training s | val accuracy |\n|---|---|---|---|")

    with tempfile.TemporaryDirectory() as cache:
        model = fresh()
        t0 = time.perf_counter()
        views = viewcache.load_or_build(model, tx, vx, aug, max(args.views), 0, Path(cache), quiet=True)
        embed_s = time.perf_counter() - t0
        per_view = embed_s / (max(args.views) + args.val / args.train)
        val_f = torch.from_numpy(np.array(views.val)).float()
        for k in sorted(set(args.views)) + [0]:
            model = fresh()
            net = model.shared_tail_module()
            if k:  # the first k of the built views: what a k-view cache would hold
                sub = viewcache.Views(views.train[:k], views.val, views.folder)
                data = lambda e, sub=sub: (viewcache.epoch_features(sub, e, 0), ty)
            else:  # no augmentation: the plain images, embedded once
                plain = model.embed_shared(tx.float() / 255).half()
                data = lambda e: (plain, ty)
            acc, secs = train_and_score(cfg, net, args.epochs, data, val_f, vy)
            name = f"{k} cached view{'s' if k > 1 else ''}" if k else "no augmentation (cached)"
            results.append({"method": name, "views": k, "embed_seconds": round(per_view * max(k, 1), 1),
                            "train_seconds": round(secs, 1), "val_accuracy": acc})
            print(f"| {name} | {per_view * max(k, 1):.0f} | {secs:.0f} | {acc:.2%} |", flush=True)

    if not args.no_fly:
        model = fresh()
        val_feats = model.embed_shared(vx.float() / 255)
        t0 = time.perf_counter()
        opt = make_optimizer(model, cfg)
        for epoch in range(1, args.epochs + 1):  # uint8 images: train_epoch augments, the whole backbone runs
            train_epoch(model, opt, tx, ty, cfg, epoch, Progress(1, "", True))
        secs = time.perf_counter() - t0
        acc = evaluate_model(model.shared_tail_module(), val_feats, vy, 500)[1]
        results.append({"method": "on the fly", "views": None, "embed_seconds": 0, "train_seconds": round(secs, 1),
                        "val_accuracy": acc})
        print(f"| on the fly (whole backbone every epoch) | 0 | {secs:.0f} | {acc:.2%} |", flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "preset": args.preset, "train_images": args.train, "val_images": args.val, "epochs": args.epochs,
        "threads": torch.get_num_threads(), "machine": platform.machine(), "commit": commit,
        "loadavg": os.getloadavg(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
