"""A run's network as one graph from images to logits, serialised as ONNX or TorchScript (in memory: the
caller writes the bytes atomically).

The graph takes what cifarlab's own evaluation takes and does what `predict_logits` does to it, so an
exported model and the run score alike: uint8 -> float [0, 1] (`device.to_input`), the network (which
standardises inside: the fast nets subtract CIFAR-10's channel means, MobileNets upscale 32 -> 128
bilinearly and map to [-1, 1]), and the run's test-time augmentation (`tta_logits`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch
import torch.nn as nn

from cifarlab.device import to_input
from cifarlab.errors import UserError
from cifarlab.export import CONTRACT, INPUT, OUTPUT
from cifarlab.models.predict import tta_logits



class ImagesToLogits(nn.Module):
    """uint8 images (N, 3, 32, 32) -> logits (N, 10), exactly as predict_logits computes them (in float32)."""

    def __init__(self, model: nn.Module, tta: str = "none"):
        super().__init__()
        self.model = model.eval()
        self.tta = tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return tta_logits(self.model, to_input(images, channels_last=False), self.tta)


def example_images(n: int = 2) -> torch.Tensor:
    # two images, not one: the exporters would specialise a batch of 1 to a constant
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def onnx_bytes(net: ImagesToLogits, metadata: dict[str, str]) -> bytes:
    """The ONNX model (opset the exporter chooses, weights inside the file, a dynamic batch axis) with
    `metadata` in its metadata_props. torch.onnx's default exporter (torch.export-based; the TorchScript
    one is deprecated since torch 2.9) needs onnxscript, which the `export` extra installs."""
    try:
        import onnxscript  # noqa: F401  (what torch.onnx.export(dynamo=True) imports)
    except ImportError:
        raise UserError("--format onnx needs onnx and onnxscript: pip install 'cifarlab[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(net, (example_images(),), input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: batch},), dynamo=True, external_data=False)
    proto = program.model_proto
    proto.doc_string = CONTRACT
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def torchscript_bytes(net: ImagesToLogits, metadata: dict[str, str]) -> bytes:
    """A traced TorchScript module (`torch.jit.load(path)(images)`); `metadata` as extra files."""
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(net, (example_images(),), check_trace=False)  # the tests check it instead
        return traced.save_to_buffer(_extra_files=metadata)  # what torch.jit.save writes to a file object


@contextlib.contextmanager
def _quiet():
    """The exporters print progress lines and warn about shape-dependent Python code; the input shape is
    fixed at 3x32x32 by the contract (only the batch varies), and the tests compare the outputs."""
    log = logging.getLogger("torch.onnx")  # e.g. "torchvision is not installed. Skipping torchvision::nms"
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)
