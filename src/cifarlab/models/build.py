"""A run's network from its config: the registry's model, or a pretrained backbone wrapped for transfer
learning, on its device and memory layout; plus the fast net's data-dependent initialisation."""

from __future__ import annotations

import torch
import torch.nn as nn

from cifarlab.config import Config, is_transfer
from cifarlab.device import to_input, use_channels_last
from cifarlab.models.registry import create_model
from cifarlab.models.transfer import TransferNet


def build_model(cfg: Config, device: torch.device, pretrained: bool = True) -> nn.Module:
    """The run's network. `pretrained=False` skips reading cfg.weights (a checkpoint will overwrite them)."""
    torch.manual_seed(cfg.seed)  # same initial weights for the same seed
    if is_transfer(cfg):
        backbone = create_model(cfg.model, alpha=cfg.alpha)
        if pretrained and cfg.weights:
            from cifarlab.models.weights import load_weights  # late: the TFLite/HDF5 readers only when used

            load_weights(backbone, cfg.weights, input_size=cfg.input_size)
        model = TransferNet(backbone, cfg.input_size, cfg.trainable, cfg.head, cfg.dropout)
    else:
        model = create_model(cfg.model)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if use_channels_last(cfg, device) else model


def init_from_data(model: nn.Module, cfg: Config, train_x: torch.Tensor, n: int = 5000) -> None:
    """Data-dependent initialisation (the fast net's whitening layer) from a seeded sample of images."""
    if hasattr(model, "init_from_data") and train_x.dtype == torch.uint8:
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(cfg.seed))[:n]
        model.init_from_data(to_input(train_x[pick.to(train_x.device)], False))
