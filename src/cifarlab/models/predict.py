"""Running a network on uint8 images in eval mode: batched, with the config's test-time augmentation
and autocast. Training's per-epoch validation and every evaluation share it, so both score alike."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifarlab.device import autocast, to_input


def tta_logits(model: nn.Module, x: torch.Tensor, tta: str) -> torch.Tensor:
    """Logits for float images x, averaged over test-time views: none; flip (x and its mirror); or
    flip_translate (airbench's level 2: half the weight on the flip pair, half on the flip pairs of the
    image shifted one pixel up-left and down-right)."""
    if tta == "none":
        return model(x)
    mirror = lambda z: 0.5 * (model(z) + model(z.flip(-1)))
    logits = mirror(x)
    if tta == "flip":
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * (mirror(padded[..., :h, :w]) + mirror(padded[..., 2:, 2:]))
    return 0.5 * logits + 0.5 * shifted


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1000, channels_last: bool = False,
                   tta: str = "none", amp: str = "auto") -> torch.Tensor:
    """Logits for uint8 images (N, 3, H, W) in eval mode, batched, with optional test-time augmentation
    (tta_logits) and autocast as for training (`amp`); returned as float32 on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    with autocast(amp, device):
        out = [tta_logits(model, to_input(x[i:i + batch_size].to(device), channels_last), tta).float().cpu()
               for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 10)


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
                   channels_last: bool = False, tta: str = "none", amp: str = "auto") -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on uint8 images x and labels y."""
    logits = predict_logits(model, x, batch_size, channels_last, tta, amp)
    y = y.cpu()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()
