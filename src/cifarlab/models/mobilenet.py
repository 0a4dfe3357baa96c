"""MobileNet v1 and v2, built so that imported TensorFlow/Keras weights behave exactly as in TensorFlow.

What that takes: TF 'SAME' padding (a stride-2 conv on an even size pads 0 before and 1 after, where
PyTorch's symmetric padding would shift every feature map by one pixel), BatchNorm eps 1e-3, ReLU6,
and MobileNet's input range [-1, 1]. The models take RGB in [0, 1] like every cifarlab model and map
it with x * 2 - 1, i.e. (q - 127.5) / 127.5 for a uint8 pixel q; the quantised TFLite files use
(q - 128) / 128, which differs by at most 1/128 (under one grey level).

Every conv layer is one ConvBNReLU unit, in TensorFlow's layer order, so weights.py can load a file
by walking the units and the file's conv layers side by side. Odd input sizes follow TF 'SAME'
(pad 1 before, 1 after); Keras' MobileNet v1 pads stride-2 layers with a fixed (0, 1) and disagrees
only there, never on the 128/160/192/224 inputs its weights were trained at (or on CIFAR's 32).
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.models.cnn import keras_init_
from cifarlab.models.registry import register_model


def same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one spatial dimension of size n, kernel k, stride s."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """nn.Conv2d with TF 'SAME' padding, worked out per input size (no dilation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (top, bottom), (left, right) = same_pad(x.shape[-2], kh, sh), same_pad(x.shape[-1], kw, sw)
        if top == bottom and left == right:  # symmetric: let the conv pad, no extra copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, 0, 1, self.groups)


class ConvBNReLU(nn.Module):
    """One TensorFlow conv layer: SAME conv (no bias), BatchNorm(eps=1e-3), ReLU6 (or linear)."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1,
                 relu: bool = True, momentum: float = 0.01):
        super().__init__()
        self.conv = SameConv2d(c_in, c_out, k, stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=momentum)  # Keras momentum m == PyTorch 1 - m
        self.act = nn.ReLU6(inplace=True) if relu else nn.Identity()

    @property
    def depthwise(self) -> bool:
        return self.conv.groups > 1

    @property
    def relu6(self) -> bool:
        return isinstance(self.act, nn.ReLU6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


# (pointwise filters, stride of the depthwise conv) of v1's 13 depthwise-separable blocks
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    """MobileNet v1 (Howard et al. 2017) as Keras builds it: widths int(c * alpha), Keras layer order.

    features is flat: [conv1, then conv_dw_i and conv_pw_i for i = 1..13], 27 ConvBNReLU units.
    forward returns global-average-pooled features (N, 1024 * alpha) when num_classes == 0, else logits.
    """

    def __init__(self, alpha: float = 1.0, num_classes: int = 0):
        super().__init__()
        c = int(32 * alpha)
        units = [ConvBNReLU(3, c, 3, 2)]
        for filters, stride in V1_BLOCKS:
            c_out = int(filters * alpha)
            units += [ConvBNReLU(c, c, 3, stride, groups=c), ConvBNReLU(c, c_out)]
            c = c_out
        self.alpha, self.feature_dim = alpha, c
        self.features = nn.Sequential(*units)
        self.classifier = nn.Linear(c, num_classes) if num_classes else nn.Identity()
        keras_init_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x).mean((2, 3)))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a width to a multiple of 8 without losing more than 10%, as TF-slim and Keras do."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class InvertedResidual(nn.Module):
    """v2 block: 1x1 expand (skipped when expand == 1), 3x3 depthwise, linear 1x1 projection, residual."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        bn = dict(momentum=0.001)  # Keras v2 uses BatchNorm momentum 0.999
        units = [ConvBNReLU(c_in, hidden, **bn)] if expand != 1 else []
        units += [ConvBNReLU(hidden, hidden, 3, stride, groups=hidden, **bn),
                  ConvBNReLU(hidden, c_out, relu=False, **bn)]  # linear bottleneck: no ReLU
        self.conv = nn.Sequential(*units)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


# (expansion t, channels c, repeats n, first stride s), Table 2 of Sandler et al. 2018
V2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    """MobileNet v2 (Sandler et al. 2018) as TF-slim and Keras build it.

    features: [stem ConvBNReLU, 17 InvertedResidual blocks, final 1x1 ConvBNReLU to 1280].
    The TFLite ImageNet classifier has num_classes=1001 (index 0 = background).
    """

    def __init__(self, alpha: float = 1.0, num_classes: int = 0):
        super().__init__()
        c = make_divisible(32 * alpha)
        layers: list[nn.Module] = [ConvBNReLU(3, c, 3, 2, momentum=0.001)]
        for t, filters, n, s in V2_BLOCKS:
            c_out = make_divisible(int(filters * alpha))
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        self.feature_dim = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
        layers.append(ConvBNReLU(c, self.feature_dim, momentum=0.001))
        self.alpha = alpha
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(self.feature_dim, num_classes) if num_classes else nn.Identity()
        keras_init_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x).mean((2, 3)))


@register_model
def mobilenet_v1(num_classes: int = 0, alpha: float = 1.0) -> nn.Module:
    """MobileNet v1, width multiplier alpha (Keras: 0.25, 0.5, 0.75, 1.0 have ImageNet weights)."""
    return MobileNetV1(alpha, num_classes)


@register_model
def mobilenet_v2(num_classes: int = 0, alpha: float = 1.0) -> nn.Module:
    """MobileNet v2, width multiplier alpha; num_classes=1001 matches the TFLite ImageNet classifier."""
    return MobileNetV2(alpha, num_classes)


# ---------------------------------------------------------------- freezing

def _stay_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def freeze_(module: nn.Module) -> nn.Module:
    """Freeze module in place: no gradients for its parameters, and inference mode (batch-norm
    statistics frozen, dropout off) even when a parent later calls .train()."""
    module.requires_grad_(False)
    for m in module.modules():
        # an instance attribute shadows nn.Module.train; a partial (not a lambda) keeps it picklable
        m.train = functools.partial(_stay_eval, m)
    return module.eval()
