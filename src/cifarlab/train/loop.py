"""The training recipe, visible at a glance: Adam, cross-entropy + Keras-style L2 on conv kernels,
manual learning-rate drops, optional Keras-style augmentation, one validation pass per epoch.

The whole dataset lives as uint8 tensors on the device; a batch is one gather, one cast and (with
augmentation) one batched affine warp: no per-image Python work. Every epoch is seeded from
(seed, epoch), so a run resumed from its last checkpoint ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.config import Config, is_transfer, save_config
from cifarlab.data import Cifar10, class_balanced_subset
from cifarlab.data.augment import AugmentConfig, augment_batch
from cifarlab.errors import UserError
from cifarlab.io import load_checkpoint, save_checkpoint, write_csv, write_json
from cifarlab.models import create_model
from cifarlab.models.transfer import TransferNet
from cifarlab.models.weights import load_weights
from cifarlab.models.cnn import conv_kernels
from cifarlab.train import runctl
from cifarlab.train.progress import Progress, fmt_time

# The frozen MobileNet forward runs fastest at small batches on CPU (cache-resident activations):
# 199 img/s at 32, 181 at 64, 152 at 256 (benchmarks/mnet_throughput.py, RESULTS.md).
EMBED_BATCH = 64
NAN_CHECK_EVERY = 50  # batches between NaN checks of the running loss (one host sync each)
HISTORY_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but CUDA is not available (use --set device=auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' requested but MPS is not available (use --set device=auto)")
    return torch.device(name)


def augment_config(cfg: Config) -> AugmentConfig:
    a = dataclasses.asdict(cfg.augment)
    return AugmentConfig(**{**a, "zoom": tuple(a["zoom"])})


def to_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 images -> float [0, 1]; cached embeddings (float16) -> float32."""
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Keras `kernel_regularizer=l2(c)` adds c * sum(w**2) to the loss (not AdamW-style decay)."""
    return sum(w.square().sum() for w in conv_kernels(model))


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: Config,
                epoch: int, progress: Progress) -> tuple[float, float]:
    """One pass over (x, y) in a seeded random order; returns (mean loss, accuracy)."""
    model.train()
    gen = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
    torch.manual_seed(epoch_seed(cfg.seed, epoch) + 1)  # dropout draws
    aug = augment_config(cfg)
    order = torch.randperm(len(x), generator=gen).to(x.device)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    seen = 0
    n_batches = math.ceil(len(x) / cfg.batch_size)
    for i in range(n_batches):
        runctl.check_stop(epoch, i, n_batches)  # Ctrl-C: stop between batches, never mid-step
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        xb, yb = to_input(x[idx], cfg.channels_last), y[idx]
        if aug.enabled and x.dtype == torch.uint8:  # never on cached embeddings
            xb = augment_batch(xb, aug, gen)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        total = loss + cfg.l2 * l2_penalty(model) if cfg.l2 else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        # Accumulate on the device; values are read only when the progress line is drawn.
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == yb).sum()
        seen += len(idx)
        if (i + 1) % NAN_CHECK_EVERY == 0:
            runctl.check_finite(loss_sum, "the training loss", epoch)
        progress.update(i + 1, lambda: f"loss {loss_sum.item() / seen:.4f} acc {correct.item() / seen:.4f}")
    if not math.isfinite(loss_sum.item()):
        raise UserError(f"epoch {epoch}: training loss became {loss_sum.item()} (try a lower lr); last good checkpoint kept")
    return loss_sum.item() / seen, correct.item() / seen


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000, channels_last: bool = False) -> torch.Tensor:
    """Logits for uint8 images (N, 3, H, W) in eval mode, batched; returned on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(to_input(x[i:i + batch_size].to(device), channels_last)).float().cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 10)


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
                   channels_last: bool = False) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on uint8 images x and labels y."""
    logits = predict_logits(model, x, batch_size, channels_last)
    y = y.cpu()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def build_model(cfg: Config, device: torch.device, pretrained: bool = True) -> nn.Module:
    """The run's network. `pretrained=False` skips reading cfg.weights (a checkpoint will overwrite them)."""
    torch.manual_seed(cfg.seed)  # same initial weights for the same seed
    if is_transfer(cfg):
        backbone = create_model(cfg.model, alpha=cfg.alpha)
        if pretrained and cfg.weights:
            load_weights(backbone, cfg.weights, input_size=cfg.input_size)
        model = TransferNet(backbone, cfg.input_size, cfg.trainable, cfg.head, cfg.dropout)
    else:
        model = create_model(cfg.model)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


@torch.inference_mode()
def embed_all(model: TransferNet, x: torch.Tensor, batch_size: int, quiet: bool, label: str) -> torch.Tensor:
    """The frozen part's output for every image, as float16 (half the memory; the head sees
    float32 again). Done once per run instead of once per epoch."""
    device = next(model.parameters()).device
    progress = Progress(math.ceil(len(x) / batch_size), label, quiet)
    out = []
    for i in range(0, len(x), batch_size):
        out.append(model.embed(to_input(x[i:i + batch_size].to(device), False)).half())
        progress.update(len(out))
    return torch.cat(out)


def fit(cfg: Config, data: Cifar10, run_dir: Path, resume: bool = False, quiet: bool = False,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """_fit under run control: RUN_DIR/.lock keeps a second process out (released by the OS even on
    kill -9); Ctrl-C or SIGTERM stops at the next batch boundary with runctl.Interrupted, which says what
    is kept and the resume command; a NaN or infinite loss or weight stops the run before anything is saved."""
    with runctl.RunControl(run_dir) as ctl:
        return _fit(cfg, data, run_dir, resume, quiet, log, ctl)


def _fit(cfg: Config, data: Cifar10, run_dir: Path, resume: bool, quiet: bool,
         log: Callable[[str], None] | None, ctl: runctl.RunControl) -> dict[str, Any]:
    """Train `cfg` on `data`, writing config.yaml, history.csv, metrics.json, last.pt, best.pt and
    train.log into `run_dir`. With `resume`, continue from run_dir/last.pt. Returns the metrics."""
    # Everything that can fail on bad input (device, weights file) happens before anything is written.
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "last.pt"
    device = select_device(cfg.device)
    model = build_model(cfg, device, pretrained=not (resume and ckpt_path.exists()))
    ctl.make_run_dir(run_dir)  # and lock it
    log = log or _logger(run_dir / "train.log", quiet)

    train_x, train_y = data.train_x, data.train_y
    if cfg.train_subset:
        keep = class_balanced_subset(train_y, cfg.train_subset, seed=cfg.seed)
        train_x, train_y = train_x[keep], train_y[keep]
    train_x, train_y = train_x.to(device), train_y.to(device)
    val_x, val_y = data.val_x.to(device), data.val_y.to(device)

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    state = {"epoch": 0, "history": [], "best_epoch": 0, "best_val_accuracy": -1.0}
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        log(f"resuming {run_dir} after epoch {state['epoch']}/{cfg.epochs}")
    save_config(cfg, run_dir / "config.yaml")
    if state["epoch"] == 0:
        log(f"training {cfg.preset or cfg.model} ({cfg.model}) on {len(train_x)} images, validating on "
            f"{len(val_x)}, {cfg.epochs} epochs, batch {cfg.batch_size}, device {device.type}")

    net = model  # what the loop trains: the whole model, or only its tail on cached embeddings
    embed_seconds = 0.0
    if state["epoch"] < cfg.epochs and isinstance(model, TransferNet) and cfg.cache_features \
            and not augment_config(cfg).enabled:
        t0 = time.perf_counter()
        train_x = embed_all(model, train_x, EMBED_BATCH, quiet, "embedding train set")
        val_x = embed_all(model, val_x, EMBED_BATCH, quiet, "embedding validation set")
        net = model.tail_module()
        embed_seconds = time.perf_counter() - t0
        log(f"cached frozen-part outputs {tuple(train_x.shape[1:])} for {len(train_x) + len(val_x)} images "
            f"in {embed_seconds:.0f}s; training the last {sum(p.numel() for p in net.parameters()):,} "
            "parameters on them")

    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = cfg.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        n_batches = math.ceil(len(train_x) / cfg.batch_size)
        progress = Progress(n_batches, f"epoch {epoch}/{cfg.epochs}", quiet)
        train_loss, train_acc = train_epoch(net, opt, train_x, train_y, cfg, epoch, progress)
        val_loss, val_acc = evaluate_model(net, val_x, val_y, cfg.eval_batch_size, cfg.channels_last)
        runctl.check_finite(val_loss, "the validation loss", epoch, net)  # nothing diverged is saved
        seconds = time.perf_counter() - t0
        row = dict(epoch=epoch, lr=lr, train_loss=round(train_loss, 5), train_acc=round(train_acc, 5),
                   val_loss=round(val_loss, 5), val_acc=round(val_acc, 5), seconds=round(seconds, 2))
        state["history"].append(row)
        state["epoch"] = epoch
        if val_acc > state["best_val_accuracy"]:
            state["best_val_accuracy"], state["best_epoch"] = val_acc, epoch
            save_checkpoint(run_dir / "best.pt", {"model": model.state_dict(), "epoch": epoch, "val_accuracy": val_acc})
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state})
        write_csv(run_dir / "history.csv", state["history"], HISTORY_FIELDS)
        metrics = _metrics(cfg, state, len(train_x), embed_seconds)
        write_json(run_dir / "metrics.json", metrics)
        eta = sum(r["seconds"] for r in state["history"][-3:]) / min(3, epoch) * (cfg.epochs - epoch)
        log(f"epoch {epoch}/{cfg.epochs} lr {lr:.2g} train loss {train_loss:.4f} acc {train_acc:.4f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.4f} | {seconds:.1f}s, ETA {fmt_time(eta)}")
    metrics = _metrics(cfg, state, len(train_x), embed_seconds)
    write_json(run_dir / "metrics.json", metrics)
    _write_outputs(run_dir, state["history"], metrics)  # again: a kill may have come between last.pt and these
    log(f"done: val_accuracy {metrics['val_accuracy']:.4f} (best {metrics['best_val_accuracy']:.4f} at epoch "
        f"{metrics['best_epoch']}), {metrics['train_seconds'] / 60:.1f} min; run directory {run_dir}")
    return metrics


def _write_outputs(run_dir: Path, history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    import os

    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun only rank 0 writes
        write_csv(run_dir / "history.csv", history, HISTORY_FIELDS)
        write_json(run_dir / "metrics.json", metrics)


def _metrics(cfg: Config, state: dict[str, Any], n_train: int, embed_seconds: float = 0.0) -> dict[str, Any]:
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
        "train_images": n_train,
        "model": cfg.model,
        "preset": cfg.preset,
    }


def _logger(path: Path, quiet: bool) -> Callable[[str], None]:
    import sys

    def log(msg: str) -> None:
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    return log
