"""The training loop, visible at a glance: the study's recipe by default (Adam, cross-entropy +
Keras-style L2 on conv kernels, manual learning-rate drops, optional Keras-style augmentation), or the
fast trainers' (cifarlab.train.recipe), one validation pass per epoch.

The whole dataset lives as uint8 tensors on the device; a batch is one gather, one cast and (with
augmentation) one batched affine warp: no per-image Python work. Every epoch is seeded from
(seed, epoch), so a run resumed from its last checkpoint ends exactly where an uninterrupted one would.
A MobileNet's frozen part runs once, not every epoch: on the images (no augmentation) or on K augmented
views of them (`aug_views`, train/viewcache.py); only its tail trains.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from cifarlab.config import Config, save_config
from cifarlab.data import Cifar10, class_balanced_subset
from cifarlab.data.cifar import default_cache_dir
from cifarlab.data.augment import alternating_flips, augment_batch, augment_config
from cifarlab.device import autocast, dist_info, machine, select_device, to_input, use_channels_last
from cifarlab.errors import UserError
from cifarlab.io import load_checkpoint, save_checkpoint, write_csv, write_json
from cifarlab.models.build import build_model, init_from_data
from cifarlab.models.cnn import conv_kernels
from cifarlab.models.predict import evaluate_model
from cifarlab.models.transfer import TransferNet
from cifarlab.rundir import RunDir
from cifarlab.train import runctl, viewcache
from cifarlab.train.callbacks import Callback, call
from cifarlab.train.progress import Progress, fmt_time
from cifarlab.train.recipe import LOOKAHEAD_EVERY, Lookahead, loss_fn, lr_at_step, make_optimizer, set_lr

# The frozen MobileNet forward runs fastest at small batches on CPU (cache-resident activations):
# 199 img/s at 32, 181 at 64, 152 at 256 (benchmarks/mnet_throughput.py, RESULTS.md).
EMBED_BATCH = 16  # the frozen MobileNet pass: 1.9x the img/s of batch 64 with freed memory kept (embed_alloc.py)
NAN_CHECK_EVERY = 50  # batches between NaN checks of the running loss (one host sync each)
HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Keras `kernel_regularizer=l2(c)` adds c * sum(w**2) to the loss (not AdamW-style decay)."""
    return sum(w.square().sum() for w in conv_kernels(model))


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def batch_indices(order: torch.Tensor, i: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This process's share of global batch i: every world-th image of it, starting at rank."""
    return order[i * batch_size:(i + 1) * batch_size][rank::world]


def steps_per_epoch(n_images: int, batch_size: int, world: int = 1) -> int:
    """Optimiser steps in one epoch; under torchrun only whole global batches, so every rank steps alike."""
    return n_images // batch_size if world > 1 else math.ceil(n_images / batch_size)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor, cfg: Config,
               criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a ready float batch: the loss (cfg's criterion) + Keras L2; returns
    (the loss without L2, logits). The training loop and the lr finder (train/lrfind.py) share it."""
    with autocast(cfg.amp, xb.device):
        logits = model(xb)
        loss = criterion(logits.float(), yb)
    total = loss + cfg.l2 * l2_penalty(model) if cfg.l2 else loss
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    return loss, logits


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: Config,
                epoch: int, progress: Progress, lookahead: Lookahead | None = None) -> tuple[float, float]:
    """One pass over (x, y) in a seeded random order; returns (mean loss, accuracy) of this process's share.

    Under torchrun every process draws the same order and takes its slice of each global batch of
    cfg.batch_size images, so the effective batch and learning rate are those of a single process.
    """
    model.train()
    rank, world = dist_info()
    device = x.device
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    order = torch.randperm(len(x), generator=gen).to(device)
    aug_gen = gen if world == 1 else torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) + 7919 * rank)
    torch.manual_seed(epoch_seed(cfg.seed, epoch) + 1 + 7919 * rank)  # dropout draws
    aug = augment_config(cfg)
    augment = aug.enabled and x.dtype == torch.uint8  # never on cached embeddings
    epoch_flips = alternating_flips(torch.arange(len(x)), len(x), epoch, cfg.seed).to(device) \
        if augment and aug.alternate_flip else None
    channels_last = use_channels_last(cfg, device)
    criterion = loss_fn(cfg)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    n_batches = steps_per_epoch(len(x), cfg.batch_size, world)  # equal on all ranks
    for i in range(n_batches):
        runctl.check_stop(epoch, i, n_batches)  # Ctrl-C: stop between batches, never mid-step
        idx = batch_indices(order, i, cfg.batch_size, rank, world)
        set_lr(opt, lr_at_step(cfg, epoch, i, n_batches))
        xb, yb = to_input(x[idx], False), y[idx]
        if augment:
            flips = epoch_flips[idx] if aug.alternate_flip else None
            xb = augment_batch(xb, aug, aug_gen, flips)
        if channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss, logits = train_step(model, opt, xb, yb, cfg, criterion)
        step = (epoch - 1) * n_batches + i + 1
        if lookahead is not None and step % LOOKAHEAD_EVERY == 0:
            lookahead.step(getattr(model, "module", model), step / (cfg.epochs * n_batches))
        # Accumulate on the device; values are read only when the progress line is drawn.
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(idx)
        if (i + 1) % NAN_CHECK_EVERY == 0:
            runctl.check_finite(loss_sum, "the training loss", epoch)
        progress.update(i + 1, lambda: f"loss {loss_sum.item() / seen:.4f} acc {correct.item() / seen:.4f}")
    runctl.check_finite(loss_sum, "the training loss", epoch)
    return loss_sum.item() / seen, correct.item() / seen


@torch.inference_mode()
def embed_all(model: TransferNet, x: torch.Tensor, batch_size: int, quiet: bool, label: str) -> torch.Tensor:
    """The frozen part's output for every image, as float16 (half the memory; the head sees
    float32 again). Done once per run instead of once per epoch."""
    device = next(model.parameters()).device
    progress = Progress(math.ceil(len(x) / batch_size), label, quiet)
    out = []
    for i in range(0, len(x), batch_size):
        runctl.check_stop(0, len(out), progress.total, label)  # minutes on a CPU: Ctrl-C must not wait for it
        out.append(model.embed(to_input(x[i:i + batch_size].to(device), False)).half())
        progress.update(len(out))
    return torch.cat(out)


def fit(cfg: Config, data: Cifar10, run_dir: Path, resume: bool = False, quiet: bool = False,
        log: Callable[[str], None] | None = None, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """_fit under run control: RUN_DIR/.lock keeps a second process out (released by the OS even on
    kill -9); Ctrl-C or SIGTERM stops at the next batch boundary with runctl.Interrupted, which says what
    is kept and the resume command; a NaN or infinite loss or weight stops the run before anything is saved.
    `callbacks` (train/callbacks.py) hear the start, every epoch and the end, on the writing process."""
    with runctl.RunControl(run_dir) as ctl:
        return _fit(cfg, data, run_dir, resume, quiet, log, ctl, list(callbacks))


def _fit(cfg: Config, data: Cifar10, run_dir: Path, resume: bool, quiet: bool,
         log: Callable[[str], None] | None, ctl: runctl.RunControl, callbacks: list[Callback]) -> dict[str, Any]:
    """Train `cfg` on `data`, writing config.yaml, history.csv, metrics.json, last.pt, best.pt and
    train.log into `run_dir`. With `resume`, continue from run_dir/last.pt. Returns the metrics."""
    # Everything that can fail on bad input (device, weights file) happens before anything is written.
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    ckpt_path = rd.last
    rank, world = dist_info()
    device = select_device(cfg.device)
    if world > 1:
        device = _init_distributed(cfg, device)
    writer = rank == 0  # under torchrun only rank 0 writes the run directory
    model = build_model(cfg, device, pretrained=not (resume and ckpt_path.exists()))
    if writer:
        ctl.make_run_dir(run_dir)  # and lock it
    log = log or _logger(rd.log, quiet or not writer, write=writer)

    train_x, train_y = data.train_x, data.train_y
    if cfg.train_subset:
        keep = class_balanced_subset(train_y, cfg.train_subset, seed=cfg.seed)
        train_x, train_y = train_x[keep], train_y[keep]
    train_x, train_y = train_x.to(device), train_y.to(device)
    val_x, val_y = data.val_x.to(device), data.val_y.to(device)

    init_from_data(model, cfg, train_x)  # before the optimiser sees the weights; a resume overwrites them
    opt = make_optimizer(model, cfg)
    state = {"epoch": 0, "history": [], "best_epoch": 0, "best_val_accuracy": -1.0}
    slow_weights = None  # the lookahead's, restored once we know which module trains
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        slow_weights = ckpt.get("lookahead")
        state = ckpt["state"]
        log(f"resuming {run_dir} after epoch {state['epoch']}/{cfg.epochs}")
    if writer:
        save_config(cfg, rd.config)
    if state["epoch"] == 0:
        log(f"training {cfg.preset or cfg.model} ({cfg.model}) on {len(train_x)} images, validating on "
            f"{len(val_x)}, {cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g}, "
            f"device {device.type}" + (f", {world} processes of batch {cfg.batch_size // world} (effective "
                                       f"batch {cfg.batch_size}, lr as for one process)" if world > 1 else ""))

    net = model  # what the loop trains: the whole model, or only its tail on cached embeddings
    embed_seconds = 0.0
    about = {"data": data.source, "machine": machine(device)}  # for metrics.json (and a model card)
    if state["epoch"] < cfg.epochs and isinstance(model, TransferNet) and cfg.cache_features \
            and not augment_config(cfg).enabled and not cfg.aug_views:
        t0 = time.perf_counter()
        train_x = embed_all(model, train_x, EMBED_BATCH, quiet, "embedding train set")
        val_x = embed_all(model, val_x, EMBED_BATCH, quiet, "embedding validation set")
        net = model.tail_module()
        embed_seconds = time.perf_counter() - t0
        log(f"cached frozen-part outputs {tuple(train_x.shape[1:])} for {len(train_x) + len(val_x)} images "
            f"in {embed_seconds:.0f}s; training the last {sum(p.numel() for p in net.parameters()):,} "
            "parameters on them")
    # aug_views = K: K augmented views (or, without augmentation, the images) embedded once into a cache
    # that MNET1 and MNET2 share; one view per epoch
    views = None
    if state["epoch"] < cfg.epochs and isinstance(model, TransferNet) and cfg.aug_views:
        t0 = time.perf_counter()
        views = viewcache.load_or_build(model, train_x.cpu(), val_x.cpu(), augment_config(cfg), cfg.aug_views,
                                        cfg.seed, default_cache_dir(), quiet or not writer, log)
        val_x = torch.from_numpy(np.array(views.val)).to(device)
        net = model.shared_tail_module()
        embed_seconds = time.perf_counter() - t0
        kind = "augmented" if augment_config(cfg).enabled else "un-augmented"
        log(f"{views.k} {kind} view(s) of {len(train_x)} images from {views.folder} ({views.nbytes / 2**30:.1f} GiB "
            f"on disk, memory-mapped) in {embed_seconds:.0f}s; training the last "
            f"{sum(p.numel() for p in net.parameters() if p.requires_grad):,} parameters on them")

    lookahead = Lookahead(net) if cfg.lookahead else None  # of what trains: the model or, cached, its tail
    if lookahead is not None and slow_weights is not None:
        lookahead.load_state_dict(slow_weights)
    channels_last = use_channels_last(cfg, device)
    trained = net if world == 1 else nn.parallel.DistributedDataParallel(net)  # averages gradients over ranks
    callbacks = callbacks if writer else []
    call(callbacks, "on_train_start", cfg, run_dir, state)
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        n_batches = math.ceil(len(train_x) / cfg.batch_size)
        lr = lr_at_step(cfg, epoch, 0, n_batches)
        progress = Progress(n_batches, f"epoch {epoch}/{cfg.epochs}", quiet or not writer)
        epoch_x = train_x if views is None else viewcache.epoch_features(views, epoch, cfg.seed).to(device)
        train_loss, train_acc = train_epoch(trained, opt, epoch_x, train_y, cfg, epoch, progress, lookahead)
        last = epoch == cfg.epochs
        if last and lookahead is not None:
            lookahead.finish(net)
        # test-time augmentation costs several forward passes: only for the final model, only on images
        tta = cfg.tta if last and val_x.dtype == torch.uint8 else "none"
        val_loss, val_acc = evaluate_model(net, val_x, val_y, cfg.eval_batch_size, channels_last, tta, cfg.amp)
        runctl.check_finite(val_loss, "the validation loss", epoch, net)  # nothing diverged is saved
        seconds = time.perf_counter() - t0
        row = dict(epoch=epoch, lr=lr, train_loss=round(train_loss, 5), train_acc=round(train_acc, 5),
                   val_loss=round(val_loss, 5), val_acc=round(val_acc, 5), seconds=round(seconds, 2))
        state["history"].append(row)
        runctl.check_progress(state["history"], len(val_y))  # a diverged run stops before it is saved
        state["epoch"] = epoch
        if val_acc > state["best_val_accuracy"]:
            state["best_val_accuracy"], state["best_epoch"] = val_acc, epoch
            if writer:
                save_checkpoint(rd.best, {"model": model.state_dict(), "epoch": epoch, "val_accuracy": val_acc})
        if writer:
            ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state}
            if lookahead is not None:
                ckpt["lookahead"] = lookahead.state_dict()
            save_checkpoint(ckpt_path, ckpt)
            write_csv(rd.history, state["history"], HISTORY_FIELDS)
            write_json(rd.metrics, _metrics(cfg, state, len(train_x), embed_seconds, about))
        eta = sum(r["seconds"] for r in state["history"][-3:]) / min(3, epoch) * (cfg.epochs - epoch)
        log(f"epoch {epoch}/{cfg.epochs} lr {lr:.2g} train loss {train_loss:.4f} acc {train_acc:.4f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.4f} | {seconds:.1f}s, ETA {fmt_time(eta)}")
        call(callbacks, "on_epoch_end", row, state, model)
    metrics = _metrics(cfg, state, len(train_x), embed_seconds, about)
    if writer:  # again at the end: a kill may have come between last.pt and these, and a resume lands here
        write_csv(rd.history, state["history"], HISTORY_FIELDS)
        write_json(rd.metrics, metrics)
    call(callbacks, "on_train_end", metrics, model)
    if world > 1:
        torch.distributed.barrier()  # no rank leaves before rank 0 has written everything
    log(f"done: val_accuracy {metrics['val_accuracy']:.4f} (best {metrics['best_val_accuracy']:.4f} at epoch "
        f"{metrics['best_epoch']}), {metrics['train_seconds'] / 60:.1f} min; run directory {run_dir}")
    return metrics


def _metrics(cfg: Config, state: dict[str, Any], n_train: int, embed_seconds: float = 0.0,
             about: dict[str, Any] | None = None) -> dict[str, Any]:
    hist = state["history"]
    return {
        "val_accuracy": hist[-1]["val_acc"] if hist else None,  # the final model (last.pt)
        "val_loss": hist[-1]["val_loss"] if hist else None,
        "best_val_accuracy": round(state["best_val_accuracy"], 5) if hist else None,  # best.pt; chosen on validation
        "best_epoch": state["best_epoch"],
        "epochs": state["epoch"],
        "epochs_planned": cfg.epochs,
        "finished": state["epoch"] >= cfg.epochs,
        "train_seconds": round(sum(r["seconds"] for r in hist), 2),  # epochs only
        "embed_seconds": round(embed_seconds, 2),  # the one-off frozen-backbone pass (this process), if cached
        "tta": cfg.tta,  # the final epoch's val_accuracy is measured with this test-time augmentation
        "train_images": n_train,
        "model": cfg.model,
        "preset": cfg.preset,
        **(about or {}),  # data: the CIFAR-10 source read; machine: device, CPU/GPU name, cores, threads (last session)
    }


def _init_distributed(cfg: Config, device: torch.device) -> torch.device:
    """torchrun: gloo on CPU, NCCL on CUDA (one GPU per local rank)."""
    import torch.distributed as dist

    rank, world = dist_info()
    if cfg.batch_size % world:
        raise UserError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _logger(path: Path, quiet: bool, write: bool = True) -> Callable[[str], None]:
    import sys

    def log(msg: str) -> None:
        if write:
            with open(path, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return log
