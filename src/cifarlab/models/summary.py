"""Table 1 generated from the code: each layer's type, output shape (Keras' H, W, C order) and parameters."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

_NAMES = {
    nn.Conv2d: "Conv. 2D", nn.BatchNorm2d: "Batch norm.", nn.ReLU6: "ReLU6", nn.ReLU: "ReLU", nn.ELU: "ELU",
    nn.MaxPool2d: "Max pooling 2D", nn.AdaptiveAvgPool2d: "Global avg. pooling", nn.Flatten: "Flatten", nn.Linear: "Dense", nn.Dropout: "Dropout",
}


def _layer_name(m: nn.Module) -> str:
    # isinstance, not type(): MobileNet's SameConv2d is a Conv2d, ReLU6 a kind of ReLU
    name = next((n for t, n in _NAMES.items() if isinstance(m, t)), type(m).__name__)
    if isinstance(m, nn.Conv2d) and m.groups > 1:
        name = "Depthwise conv. 2D"
    return f"{name} ({m.p:g})" if isinstance(m, nn.Dropout) else name


def _keras_shape(shape: torch.Size) -> str:
    dims = list(shape[1:])
    if len(dims) == 3:  # NCHW -> H, W, C as in the study's table
        dims = [dims[1], dims[2], dims[0]]
    return ", ".join(str(d) for d in dims)


def _param_count(m: nn.Module) -> int:
    """Parameters plus float buffers (BN moving statistics), the way Keras counts them."""
    return sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers() if b.is_floating_point())


@torch.no_grad()
def _trace(model: nn.Module, input_size: tuple[int, int, int], hook: Callable, leaves: Callable[[nn.Module], bool]) -> None:
    """One eval-mode forward pass of a blank image with `hook(module, input, output)` on chosen leaves."""
    hooks = [m.register_forward_hook(hook) for m in model.modules() if leaves(m)]
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()


def layer_table(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> list[tuple[str, str, int]]:
    """Rows (layer type, output shape, parameter count) for every leaf module, in forward order."""
    rows: list[tuple[str, str, int]] = []
    _trace(model, input_size, lambda m, i, o: rows.append((_layer_name(m), _keras_shape(o.shape), _param_count(m))),
           lambda m: not list(m.children()) and not isinstance(m, (nn.Sequential, nn.Identity)))
    if rows and rows[-1][0] == "Dense":  # classifiers end in a softmax, folded into the loss
        rows.append(("Softmax (in the loss)", rows[-1][1], 0))
    return rows


def format_table(name: str, rows: list[tuple[str, str, int]]) -> str:
    total = sum(r[2] for r in rows)
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{name.upper()}", f"{'Layer type':<{width}}{'Output shape':<16}{'Params':>12}"]
    lines += [f"{t:<{width}}{s:<16}{p:>12,}" for t, s, p in rows]
    lines.append(f"{'Total':<{width}}{'':<16}{total:>12,}")
    return "\n".join(lines)


def forward_flops(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Multiply-adds x 2 of one image's forward pass through convolutions and dense layers."""
    total = 0

    def hook(m: nn.Module, i, o: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += 2 * o[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features

    _trace(model, input_size, hook, lambda m: isinstance(m, (nn.Conv2d, nn.Linear)))
    return total
