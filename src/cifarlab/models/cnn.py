"""The study's from-scratch CNNs, exactly as in its Table 1.

Keras semantics where the study is silent: 3x3 'same' convolutions, Glorot-uniform kernels and zero
biases, BatchNormalization(momentum=0.99, epsilon=1e-3). The final softmax is folded into the
cross-entropy loss, so the models return logits. Table 1's "8, 8, 6" is read as 8x8x64 and the Flatten
row's "40970" as 4096 (4x4x256): 40,970 is in fact the parameter count of the Dense layer after it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cifarlab.models.registry import register_model


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


def keras_init_(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every conv and dense layer, as Keras does."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


@register_model
def base(num_classes: int = 10) -> nn.Module:
    """BASE: Conv32-BN-ReLU-Flatten-Dense512-ReLU-Dropout0.5-Dense10 (the study's provided baseline)."""
    return keras_init_(nn.Sequential(
        conv3x3(3, 32),
        nn.BatchNorm2d(32, eps=1e-3, momentum=0.01),  # Keras momentum 0.99 == PyTorch 0.01
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 32 * 32, 512),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),
    ))


@register_model
def imp(num_classes: int = 10) -> nn.Module:
    """IMP: five 3x3 convs with ELU, three max-pools, dropout 0.1/0.2/0.3, one dense output."""
    return keras_init_(nn.Sequential(
        conv3x3(3, 32), nn.ELU(),
        conv3x3(32, 32), nn.ELU(),
        nn.MaxPool2d(2), nn.Dropout(0.1),
        conv3x3(32, 64), nn.ELU(),
        nn.MaxPool2d(2), nn.Dropout(0.2),
        conv3x3(64, 128), nn.ELU(),
        conv3x3(128, 256), nn.ELU(),
        nn.MaxPool2d(2), nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(4 * 4 * 256, num_classes),
    ))


def conv_kernels(model: nn.Module) -> list[torch.Tensor]:
    """The tensors the study's L2 penalty applies to: every convolution kernel (not biases, not dense)."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
