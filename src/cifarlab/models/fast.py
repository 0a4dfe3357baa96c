"""`fast`: a small ResNet-free net for fast CIFAR-10 training, after the published fast trainers
(Keller Jordan's airbench94, itself after hlb-CIFAR10 and David Page's DAWNBench net).

What makes it train fast, in our own terms:
- a first 2x2 convolution that is *not learned*: its kernels whiten 2x2 image patches (eigenvectors
  of the patch covariance over training images, scaled by 1/sqrt(eigenvalue), each with its negative
  so a GELU keeps both signs); only its bias trains, for the first epochs;
- three blocks conv-pool-BN-GELU-conv-BN-GELU, batch norm without a learned scale, high momentum;
  every conv starts as PyTorch's default init with its first c_in filters set to the identity;
- a 3x3 max-pool to 1x1 and a bias-free linear layer whose output is scaled down (1/9) so that the
  initial logits are small.
The recipe (label smoothing, Nesterov SGD with warm-up and linear decay, weight averaging, alternating
flips, 2-pixel translations, flip/shift test-time augmentation) lives in the `fast` preset and
cifarlab.train; the net itself is plain PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.models.registry import register_model

# CIFAR-10 channel statistics on [0, 1] pixels (official training set); inputs are standardised inside
# the net so that the run's data pipeline stays uint8 -> [0, 1] for every model.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class BatchNorm(nn.BatchNorm2d):
    """Batch norm with a fixed scale of 1 (only the shift learns) and airbench's momentum (Keras 0.6)."""

    def __init__(self, c: int):
        super().__init__(c, eps=1e-12, momentum=0.4)
        self.weight.requires_grad = False


class Block(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), BatchNorm(c_out), nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), BatchNorm(c_out), nn.GELU(),
        )


class FastNet(nn.Module):
    def __init__(self, widths: tuple[int, int, int] = (64, 256, 256), num_classes: int = 10,
                 logit_scale: float = 1 / 9):
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, padding=0)  # 12 eigen-patches and their negatives
        self.whiten.weight.requires_grad = False
        self.body = nn.Sequential(
            nn.GELU(),
            Block(24, widths[0]), Block(widths[0], widths[1]), Block(widths[1], widths[2]),
            nn.MaxPool2d(3), nn.Flatten(),
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.logit_scale = logit_scale
        for m in self.body.modules():  # identity-like start: each conv first passes its input through
            if isinstance(m, nn.Conv2d):
                nn.init.dirac_(m.weight.data[:m.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.head(self.body(self.whiten(x))) * self.logit_scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening kernels from [0, 1] training images (N, 3, 32, 32); a few thousand suffice."""
        x = (images.float() - self.mean) / self.std
        patches = F.unfold(x, kernel_size=2).transpose(1, 2).reshape(-1, 12).double()  # (N*31*31, 12)
        patches = patches - patches.mean(0)
        eigval, eigvec = torch.linalg.eigh(patches.T @ patches / len(patches))
        kernels = (eigvec.T / torch.sqrt(eigval + eps)[:, None]).reshape(12, 3, 2, 2).float()
        self.whiten.weight.copy_(torch.cat([kernels, -kernels]))
        self.whiten.bias.zero_()


@register_model
def fast(num_classes: int = 10) -> nn.Module:
    """airbench94-sized: widths 64/256/256, 2.0M parameters."""
    return FastNet((64, 256, 256), num_classes)


@register_model
def fast_small(num_classes: int = 10) -> nn.Module:
    """Half width (32/128/128), about a quarter of the compute: the CPU-minutes preset."""
    return FastNet((32, 128, 128), num_classes)
