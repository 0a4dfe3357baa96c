"""Training throughput: cifarlab's own loop (augmentation off and on) vs a bare PyTorch step loop.

Same model, batch size, memory format and thread count for all three; the bare loop is
forward + cross-entropy + backward + Adam step on one fixed batch, the floor any trainer pays.
cifarlab's loop adds what a real run needs: shuffled gather from uint8, cast, L2 on conv kernels,
the Keras-style augmentation (when on), and running loss/accuracy. Achieved GFLOP/s counts a
training step as 3x the forward FLOPs (forward + two backward matmuls).

    python benchmarks/train_throughput.py [--models base imp fast_small fast] [--steps 40] [--threads N]

Prints a Markdown table; paste the latest into benchmarks/RESULTS.md. Ratios measured side by side
in one run are the figures to trust: absolute img/s on a shared 2-core machine is noisy.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from cifarlab.config import resolve_config
from cifarlab.models import build_model, forward_flops
from cifarlab.models.predict import predict_logits
from cifarlab.train.loop import train_epoch
from cifarlab.train.recipe import loss_fn, make_optimizer
from cifarlab.train.progress import Progress

PRESET = {"base": "base", "imp": "imp2", "fast_small": "fast", "fast": "fast94"}  # batch size and memory format come from these presets


def bare_loop(cfg, steps: int) -> float:
    model = build_model(cfg, torch.device("cpu"))
    opt = make_optimizer(model, cfg)  # the preset's: Adam, or Nesterov SGD with its parameter groups
    criterion = loss_fn(cfg)
    x = torch.rand(cfg.batch_size, 3, 32, 32)
    x = x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x
    y = torch.randint(0, 10, (cfg.batch_size,))

    def step():
        loss = criterion(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: allocator, oneDNN primitive caches
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def cifarlab_loop(cfg, steps: int, augment: bool) -> float:
    # when on: the preset's own augmentation (fast: flips + translations), else the study's (imp2's)
    own = cfg.augment.hflip or cfg.augment.translate or cfg.augment.rotation
    cfg.augment = (cfg.augment if own else resolve_config("imp2").augment) if augment else type(cfg.augment)()
    model = build_model(cfg, torch.device("cpu"))
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(0)
    n = (steps + 3) * cfg.batch_size
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    warm = 3 * cfg.batch_size
    train_epoch(model, opt, x[:warm], y[:warm], cfg, 1, Progress(3, quiet=True))
    t0 = time.perf_counter()
    train_epoch(model, opt, x[warm:], y[warm:], cfg, 2, Progress(steps, quiet=True))
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def bare_eval(cfg, n: int) -> float:
    """Forward passes on one fixed float batch under inference_mode: the floor for evaluation."""
    model = build_model(cfg, torch.device("cpu")).eval()
    x = torch.rand(cfg.eval_batch_size, 3, 32, 32)
    x = x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(max(1, n // cfg.eval_batch_size)):
            model(x)
    return max(1, n // cfg.eval_batch_size) * cfg.eval_batch_size / (time.perf_counter() - t0)


def cifarlab_eval(cfg, n: int) -> float:
    """cifarlab's predict_logits on uint8 images (cast, batching, logits to the CPU), no TTA."""
    model = build_model(cfg, torch.device("cpu"))
    x = torch.randint(0, 256, (max(1, n // cfg.eval_batch_size) * cfg.eval_batch_size, 3, 32, 32), dtype=torch.uint8)
    predict_logits(model, x[:cfg.eval_batch_size], cfg.eval_batch_size, cfg.channels_last)
    t0 = time.perf_counter()
    predict_logits(model, x, cfg.eval_batch_size, cfg.channels_last)
    return len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["base", "imp", "fast_small"], choices=sorted(PRESET))
    ap.add_argument("--steps", type=int, default=40, help="timed steps per measurement")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides for every model, e.g. --set channels_last=false --set batch_size=128")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps per measurement, overrides {args.set or 'none'}\n")
    print("| model | batch | channels_last | bare img/s | cifarlab img/s (no aug) | ratio | "
          "cifarlab img/s (aug) | ratio | GFLOP/s (aug) | eval batch | bare eval img/s | cifarlab eval img/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        cfg = resolve_config(PRESET[name], args.set)
        gflop = 3 * forward_flops(build_model(cfg, torch.device("cpu"))) / 1e9
        # interleave so that load from elsewhere hits all three alike
        bare, plain, aug, bare_ev, ev = [], [], [], [], []
        n_eval = 2 * args.steps * cfg.batch_size
        for _ in range(2):
            bare.append(bare_loop(resolve_config(PRESET[name], args.set), args.steps))
            plain.append(cifarlab_loop(resolve_config(PRESET[name], args.set), args.steps, augment=False))
            aug.append(cifarlab_loop(resolve_config(PRESET[name], args.set), args.steps, augment=True))
            bare_ev.append(bare_eval(resolve_config(PRESET[name], args.set), n_eval))
            ev.append(cifarlab_eval(resolve_config(PRESET[name], args.set), n_eval))
        b, p, a, be, e = max(bare), max(plain), max(aug), max(bare_ev), max(ev)
        print(f"| {name} | {cfg.batch_size} | {cfg.channels_last} | {b:.0f} | {p:.0f} | {p / b:.2f} | "
              f"{a:.0f} | {a / b:.2f} | {a * gflop:.0f} | {cfg.eval_batch_size} | {be:.0f} | {e:.0f} | {e / be:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
