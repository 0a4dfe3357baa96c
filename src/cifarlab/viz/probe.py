"""What every visualisation needs from a model: its activation layers in forward order (found by one
traced forward pass, so any architecture works), a forward pass that keeps gradients, and the model's
input at its own resolution (32 px for the from-scratch CNNs, 128 px for the MobileNets).

A layer is named after the activation (ELU, ReLU, ReLU6) that ends a conv block; the filters kind
optimises the same channels one step earlier, the conv (+ batch-norm) output, where gradients do not
vanish below zero as they do after a ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.errors import UserError
from cifarlab.models.transfer import TransferNet
from cifarlab.rundir import RunDir

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.ELU, nn.LeakyReLU, nn.SELU, nn.GELU, nn.SiLU, nn.Hardswish)


@dataclass
class Layer:
    name: str
    act: nn.Module  # its output: the activation map
    pre: nn.Module  # its output: the same channels before the nonlinearity
    shape: tuple[int, int, int]  # (C, H, W) at the model's input size


class _Stop(Exception):
    """Raised by a hook once the wanted layer has run: the rest of the network is skipped."""


class Probe:
    """A model in eval mode with frozen weights, plus its activation layers."""

    def __init__(self, model: nn.Module, input_size: int | None = None, label: str = "model"):
        self.model = model.eval().requires_grad_(False)  # gradients flow to the input only
        for m in model.modules():  # in-place activations would overwrite what the hooks capture
            if hasattr(m, "inplace"):
                m.inplace = False
        self.input_size = input_size or getattr(model, "input_size", 32)
        self.label = label
        self.layers = _find_layers(self, self.input_size)
        if not self.layers:
            raise UserError(f"{label}: no convolutional activation layers to visualise")

    # ---------------------------------------------------------------- running

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for float [0, 1] images at the input size, with gradients (TransferNet.embed has none)."""
        m = self.model
        if isinstance(m, TransferNet):
            return m.head(m.trainable(m.frozen(m.prepare(x))))
        return m(x)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).softmax(1)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, h, w) photos -> float [0, 1] at the input size: the bilinear upscale the
        MobileNets apply to 32 px images inside their forward, done first so every map is at 128 px."""
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x

    def capture(self, x: torch.Tensor, layers: list[Layer], pre: bool = False) -> list[torch.Tensor]:
        """The outputs of `layers` (activations, or pre-activations) for x; stops after the last one."""
        wanted = {id(getattr(layer, "pre" if pre else "act")): i for i, layer in enumerate(layers)}
        out: list[torch.Tensor | None] = [None] * len(layers)

        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            out[wanted[id(module)]] = output
            if all(o is not None for o in out):
                raise _Stop

        handles = [getattr(layer, "pre" if pre else "act").register_forward_hook(hook) for layer in layers]
        try:
            self.forward(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return out  # type: ignore[return-value]

    # ---------------------------------------------------------------- choosing layers

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise UserError(f"{self.label}: no layer '{name}' (layers: {', '.join(self.names())})")

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def pick(self, names: list[str] | None, n: int = 4) -> list[Layer]:
        """The named layers in forward order, or n spread evenly from the first to the last."""
        if names:
            chosen = {id(self.layer(nm)) for nm in names}
            return [layer for layer in self.layers if id(layer) in chosen]
        k = len(self.layers)
        idx = sorted({round(i * (k - 1) / max(n - 1, 1)) for i in range(min(n, k))})
        return [self.layers[i] for i in idx]

    def last(self) -> Layer:
        return self.layers[-1]


def _find_layers(probe: Probe, size: int) -> list[Layer]:
    """Every activation module with a (N, C, H, W) output, in the order the forward pass runs them;
    its `pre` is the module that ran just before it (the conv or batch-norm feeding it)."""
    leaves = [m for m in probe.model.modules() if not list(m.children())]
    order: list[tuple[nn.Module, tuple]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append((m, tuple(o.shape)))) for m in leaves]
    try:
        with torch.no_grad():
            probe.forward(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    names = _keras_names(probe.model)
    counts: dict[str, int] = {}
    layers: list[Layer] = []
    for i, (m, shape) in enumerate(order):
        if i == 0 or not isinstance(m, ACTIVATIONS) or len(shape) != 4:
            continue
        kind = type(m).__name__.lower()
        counts[kind] = counts.get(kind, 0) + 1
        layers.append(Layer(names.get(id(m), f"{kind}{counts[kind]}"), m, order[i - 1][0], shape[1:]))
    return layers


def _keras_names(model: nn.Module) -> dict[int, str]:
    """MobileNet v1 units get Keras' layer names (conv1, conv_dw_1, conv_pw_1, ..., conv_pw_13), as in
    the study's figures; other models are named by activation type (elu1, elu2, ...)."""
    if not isinstance(model, TransferNet):
        return {}
    units = list(model.frozen) + list(model.trainable)
    if not units or not all(hasattr(u, "act") and hasattr(u, "bn") for u in units):
        return {}  # MobileNet v2: inverted-residual blocks, generic names
    names = ["conv1"] + [f"conv_{'dw' if i % 2 else 'pw'}_{(i + 1) // 2}" for i in range(1, len(units))]
    return {id(u.act): n for u, n in zip(units, names)}


def load_probe(run_dir: str | Path, checkpoint: str = "last") -> Probe:
    """A trained run's model on the CPU, ready for visualisation."""
    model, cfg = RunDir(run_dir).load_model(checkpoint, device="cpu")
    model = model.to(memory_format=torch.contiguous_format)
    label = (cfg.preset or Path(run_dir).name).upper()
    return Probe(model, cfg.input_size if hasattr(model, "input_size") else 32, label)
