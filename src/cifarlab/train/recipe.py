"""The parts of a training recipe that the config chooses: optimiser, learning-rate schedule, loss and
weight averaging (lookahead). Test-time augmentation, used by validation and evaluation alike, is
cifarlab.models.predict.tta_logits.

The study's recipe is Adam with manual drops at epoch ends; the `fast` preset's is airbench94's, in
our terms: Nesterov SGD, batch-norm shifts at a much higher rate, a per-step triangular schedule,
lookahead averaging and flip/shift test-time augmentation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.config import Config

LOOKAHEAD_EVERY = 5  # steps between pulls towards the slow weights (airbench94)
LOOKAHEAD_DECAY = 0.95 ** 5  # the slow weights' final decay per pull; it rises as (progress)^3


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    # Batch-norm shifts (1-D parameters of norm layers) learn bias_lr_scale times faster with that much
    # less decay: with a fixed BN scale they are the only per-channel offsets, and they move slowly.
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                   and m.bias is not None}
    groups = [
        {"params": [p for p in params if id(p) in norm_biases], "lr_scale": cfg.bias_lr_scale,
         "weight_decay": cfg.weight_decay / cfg.bias_lr_scale},
        {"params": [p for p in params if id(p) not in norm_biases], "lr_scale": 1.0, "weight_decay": cfg.weight_decay},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def lr_at_step(cfg: Config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Learning rate for 1-based `epoch` and 0-based `step` within it."""
    if cfg.schedule == "drops":
        return cfg.lr_at(epoch)
    total = cfg.epochs * steps_per_epoch
    t = ((epoch - 1) * steps_per_epoch + step) / max(total, 1)  # progress in [0, 1)
    if t < cfg.warmup:
        return cfg.lr * (cfg.lr_start + (1 - cfg.lr_start) * t / cfg.warmup)
    return cfg.lr * (1 + (cfg.lr_end - 1) * (t - cfg.warmup) / max(1 - cfg.warmup, 1e-12))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class Lookahead:
    """Slow weights (all float parameters and buffers) that the model is pulled back to every few steps:
    slow = lerp(model, slow, decay); model = slow. The decay rises from 0 to LOOKAHEAD_DECAY over the
    run, so early training is unaffected and the end averages over the last few hundred steps."""

    def __init__(self, model: nn.Module):
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def step(self, model: nn.Module, progress: float) -> None:
        decay = LOOKAHEAD_DECAY * progress ** 3
        state = model.state_dict()
        for k, slow in self.slow.items():
            slow.lerp_(state[k], 1 - decay)
            state[k].copy_(slow)

    @torch.no_grad()
    def finish(self, model: nn.Module) -> None:
        """At the very end, the model becomes the slow weights."""
        state = model.state_dict()
        for k, slow in self.slow.items():
            state[k].copy_(slow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.slow

    def load_state_dict(self, slow: dict[str, torch.Tensor]) -> None:
        for k, v in slow.items():
            self.slow[k].copy_(v)


def loss_fn(cfg: Config):
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
