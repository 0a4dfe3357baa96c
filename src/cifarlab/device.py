"""Where tensors run, shared by training and evaluation: the device, autocast, memory layout, the
uint8-to-float input cast, the process's place under torchrun, and which machine a run trained on."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cifarlab.errors import UserError

if TYPE_CHECKING:
    from cifarlab.config import Config


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but CUDA is not available (use --device auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' requested but MPS is not available (use --device auto or cpu)")
    return torch.device(name)


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """The preset's choice (measured per model on CPU); always on CUDA, where tensor cores want NHWC."""
    return cfg.channels_last or device.type == "cuda"


def autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Config key amp: 'auto' = bf16 autocast on CUDA (no loss scaling needed, unlike fp16), fp32
    elsewhere; 'bf16' = always; 'off' = never."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 images -> float [0, 1]; cached embeddings (float16) -> float32."""
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def machine(device: torch.device) -> dict[str, object]:
    """What a run trained on, for its metrics.json and model card: device, its name, CPU cores and threads."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):  # Linux names the CPU model here; platform.processor() often does not
            name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), name)
    return {"device": device.type, "name": name, "cpu_cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "processes": dist_info()[1], "platform": platform.platform(terse=True), "torch": torch.__version__}


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

