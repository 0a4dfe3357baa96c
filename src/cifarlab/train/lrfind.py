"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks", 3.3;
fastai's `lr_find`): train a fresh model from the config for a few hundred batches while the learning rate
grows exponentially from `start` to `end`, record the loss, stop once it has clearly diverged, and suggest
a tenth of the rate where the smoothed loss was lowest (fastai's original rule: the minimum itself is
already at the edge of divergence). The curve is smoothed with a centred moving average, not fastai's
running average (beta 0.98), whose lag of ~50 batches shifts the minimum to higher rates: on `base`
(200 batches, real CIFAR-10) it put the minimum at lr 4.6e-3, 13x past the centred average's 3.4e-4,
where the batch losses were already 0.2 nats higher.

In-house, not torch-lr-finder: that wants a DataLoader and `criterion(outputs, labels)`, while our step
is tensor-based with batched augmentation and a Keras L2 term on the weights (train_step); its schedule
sends every parameter group to the same end rate, which would drop the fast nets' `bias_lr_scale` (batch-norm
shifts at 64x); and it imports pyplot and tqdm and prints. With train_step the sweep is a short loop.

It never touches a run directory: the model is built here and thrown away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cifarlab.config import Config
from cifarlab.data import Cifar10, class_balanced_subset
from cifarlab.data.augment import augment_batch, augment_config
from cifarlab.device import select_device, to_input, use_channels_last
from cifarlab.errors import UserError
from cifarlab.models.build import build_model, init_from_data
from cifarlab.train.loop import train_step
from cifarlab.train.progress import Progress
from cifarlab.train.recipe import loss_fn, make_optimizer, set_lr

WINDOW = 1 / 25  # the centred moving average spans this fraction of the sweep (8 batches of 200)
RUNNING = 0.9  # the stop rule's running average (debiased): only the recent ~10 batches count
DIVERGED = 4.0  # stop once the running loss is this many times its lowest (fastai)
MIN_STEPS = 20


@dataclass
class LRSweep:
    lrs: list[float]  # one per batch: the base rate (a parameter group with lr_scale gets that multiple)
    losses: list[float]  # the batch's training loss (the config's criterion, without L2)
    smoothed: list[float]  # centred moving average of losses
    best_lr: float  # where the smoothed loss was lowest
    suggestion: float  # best_lr / 10
    diverged: bool  # stopped before `end`


def check_range(start: float, end: float, steps: int) -> None:
    if not (math.isfinite(start) and math.isfinite(end) and 0 < start < end):
        raise UserError(f"the lr range needs 0 < start < end, got start {start:g}, end {end:g}")
    if steps < MIN_STEPS:
        raise UserError(f"--steps must be at least {MIN_STEPS} for a smoothed curve, got {steps}")


def lr_sweep(cfg: Config, data: Cifar10, steps: int = 200, start: float = 1e-7, end: float = 10.0,
             quiet: bool = True) -> LRSweep:
    """The range test on cfg's model, optimiser, loss, L2 and augmentation, batches of cfg.batch_size drawn
    from the training set (cfg.train_subset if set) in seeded random order, the lr going from `start` to
    `end` in `steps` exponential steps."""
    check_range(start, end, steps)
    device = select_device(cfg.device)
    x, y = data.train_x, data.train_y
    if cfg.train_subset:
        keep = class_balanced_subset(y, cfg.train_subset, seed=cfg.seed)
        x, y = x[keep], y[keep]
    x, y = x.to(device), y.to(device)
    model = build_model(cfg, device)
    init_from_data(model, cfg, x)
    model.train()
    opt = make_optimizer(model, cfg)
    criterion, aug = loss_fn(cfg), augment_config(cfg)
    channels_last = use_channels_last(cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.empty(0, dtype=torch.long)
    lrs, losses, avg, best = [], [], 0.0, math.inf
    progress = Progress(steps, "lr sweep", quiet)
    for i in range(steps):
        if len(order) < cfg.batch_size:  # a fresh shuffled pass when the last one runs out
            order = torch.cat([order, torch.randperm(len(x), generator=gen)])
        idx, order = order[:cfg.batch_size].to(device), order[cfg.batch_size:]
        lr = start * (end / start) ** (i / (steps - 1))
        set_lr(opt, lr)
        xb = to_input(x[idx], False)
        if aug.enabled:
            xb = augment_batch(xb, aug, gen)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = train_step(model, opt, xb, y[idx], cfg, criterion)[0].item()
        if not math.isfinite(loss):
            break
        lrs.append(lr)
        losses.append(loss)
        avg = RUNNING * avg + (1 - RUNNING) * loss
        running = avg / (1 - RUNNING ** (i + 1))
        best = min(best, running)
        progress.update(i + 1, lambda: f"lr {lr:.2g} loss {running:.4f}")
        if i >= MIN_STEPS and running > DIVERGED * best:
            break
    if len(losses) < MIN_STEPS:
        raise UserError(f"the loss diverged within {len(losses)} batches of the sweep: start lower than {start:g}")
    smoothed = centred_mean(losses, max(1, round(steps * WINDOW / 2)))
    low = min(range(len(smoothed)), key=smoothed.__getitem__)
    return LRSweep(lrs, losses, smoothed, lrs[low], lrs[low] / 10, diverged=len(losses) < steps)


def centred_mean(values: list[float], half: int) -> list[float]:
    """Mean of values[i - half : i + half + 1] for each i (fewer at the ends): no lag, unlike a running mean."""
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    n = len(values)
    return [(sums[min(n, i + half + 1)] - sums[max(0, i - half)]) / (min(n, i + half + 1) - max(0, i - half))
            for i in range(n)]
