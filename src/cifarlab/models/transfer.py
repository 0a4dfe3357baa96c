"""Transfer learning as in the study's MNET rows: upscale CIFAR images to the backbone's input size,
run a pretrained backbone whose first units are frozen, then a new head (pool or flatten, dropout,
dense to 10 classes; the softmax is in the loss).

The frozen part runs in inference mode under `torch.no_grad()`: no batch-norm updates and no
activations kept for a backward pass that would never use them. Because it never changes, its
output can be computed once and reused across epochs (`embed`, used by the trainer when no
augmentation is on).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.models.mobilenet import freeze_

TRAINABLE = ("head", "last_conv", "all")  # MNET1, MNET2, full fine-tuning


class TransferNet(nn.Module):
    def __init__(self, backbone: nn.Module, input_size: int = 128, trainable: str = "head", head: str = "avg",
                 dropout: float = 0.0, num_classes: int = 10):
        super().__init__()
        units = list(backbone.features)
        n_train = {"head": 0, "last_conv": 1, "all": len(units)}[trainable]
        self.input_size = input_size
        self.frozen = freeze_(nn.Sequential(*units[:len(units) - n_train]))
        self.trainable = nn.Sequential(*units[len(units) - n_train:])
        with torch.no_grad():  # probe the feature shape in eval mode (train-mode BN refuses a 1x1x1 batch)
            c, h, w = self.trainable.eval()(self.frozen(torch.zeros(1, 3, input_size, input_size)))[0].shape
        self.trainable.train()
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1) if head == "avg" else nn.Identity(),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c if head == "avg" else c * h * w, num_classes),
        )

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images at any size -> the backbone's input: bilinear upscale, then [-1, 1]."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x * 2 - 1

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part's output for [0, 1] images."""
        with torch.no_grad():
            return self.frozen(self.prepare(x))

    def tail(self, f: torch.Tensor) -> torch.Tensor:
        """The trainable part + head, from frozen-part outputs."""
        return self.head(self.trainable(f))

    def tail_module(self) -> nn.Module:
        """The trainable part + head as one module (sharing parameters), for training on cached embeddings."""
        return nn.Sequential(self.trainable, self.head)

    # MNET1 (everything frozen) and MNET2 (last unit trainable) share everything before the backbone's
    # last unit: cached there, one frozen pass serves both, and MNET1's one frozen unit is cheap to redo.
    @property
    def n_shared(self) -> int:
        """How many frozen units come before the backbone's last unit (the shared cut)."""
        return min(len(self.frozen), len(self.frozen) + len(self.trainable) - 1)

    def embed_shared(self, x: torch.Tensor) -> torch.Tensor:
        """The output of the frozen units before the shared cut, for [0, 1] images."""
        with torch.no_grad():
            return self.frozen[:self.n_shared](self.prepare(x))

    def shared_tail_module(self) -> nn.Module:
        """Frozen units after the shared cut (no grads, eval mode) + trainable part + head, sharing parameters."""
        return nn.Sequential(self.frozen[self.n_shared:], self.trainable, self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.embed(x))
