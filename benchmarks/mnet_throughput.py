"""MobileNet transfer training speed: the frozen backbone's forward at several batch sizes, and
training images/s for mnet1 and mnet2 uncached (augmentation on: every step runs the frozen part)
and cached (no augmentation: the frozen part's outputs are computed once, the loop trains the tail).

    python benchmarks/mnet_throughput.py [--images 512] [--batches 32 64 128 256]

Weights are random (speed does not depend on them). Prints Markdown; record it in RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from cifarlab.config import resolve_config
from cifarlab.models import build_model, forward_flops
from cifarlab.train.loop import embed_all, train_epoch
from cifarlab.train.progress import Progress


def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=512, help="images per measurement")
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256])
    args = ap.parse_args()
    x, y = images(args.images)
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"{args.images} images per measurement\n")

    base = resolve_config("mnet1", ["weights=null"])
    model = build_model(base, torch.device("cpu"))
    gflop = forward_flops(model.frozen, (3, 128, 128)) / 1e9
    print(f"frozen MobileNet v1 forward at 128 px: {gflop:.3f} GFLOP per image\n")
    print("| frozen forward, batch | img/s | GFLOP/s |\n|---|---|---|")
    for bs in args.batches:
        embed_all(model, x[:bs], bs, True, "")  # warm-up
        rate = args.images / timed(lambda: embed_all(model, x, bs, True, ""))
        print(f"| {bs} | {rate:.0f} | {rate * gflop:.0f} |", flush=True)

    print("\n| preset | trainable params | uncached img/s (aug on) | embed once img/s | cached img/s per epoch |")
    print("|---|---|---|---|---|")
    for preset in ("mnet1", "mnet2"):
        cfg = resolve_config(preset, ["weights=null"])
        model = build_model(cfg, torch.device("cpu"))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        steps = args.images // cfg.batch_size
        train_epoch(model, opt, x[:cfg.batch_size], y[:cfg.batch_size], cfg, 1, Progress(1, quiet=True))
        uncached = args.images / timed(lambda: train_epoch(model, opt, x, y, cfg, 2, Progress(steps, quiet=True)))
        f = []
        embed_rate = args.images / timed(lambda: f.append(embed_all(model, x, 256, True, "")))
        tail = model.tail_module()
        cached = args.images / timed(lambda: train_epoch(tail, opt, f[0], y, cfg, 3, Progress(steps, quiet=True)))
        print(f"| {preset} | {sum(p.numel() for p in params):,} | {uncached:.0f} | {embed_rate:.0f} | {cached:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
