"""An export loaded back as one `predict(uint8 images) -> logits`: a .onnx written by `cifarlab export` (run
by onnxruntime, as a deployment would) or an EXPORT_DIR (model.safetensors + config.yaml, rebuilt by
cifarlab and run by predict_logits, as the run itself is). `evaluate_export` scores it like evaluate_run,
returning the report instead of writing into a run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from cifarlab.config import load_config
from cifarlab.data.testset import TestSet
from cifarlab.device import select_device
from cifarlab.errors import UserError
from cifarlab.evaluate.metrics import classification_report
from cifarlab.evaluate.testset import most_confused
from cifarlab.export import CONFIG, WEIGHTS
from cifarlab.models.build import build_model
from cifarlab.models.predict import predict_logits

INSTALL = "pip install 'cifarlab[export]'"


@dataclass
class Export:
    path: Path
    format: str  # onnx | safetensors
    meta: dict[str, Any]  # what `cifarlab export` recorded: run, checkpoint, preset, the run's validation accuracy
    predict: Callable[[torch.Tensor], torch.Tensor]  # uint8 (N, 3, 32, 32) -> float32 logits (N, 10) on the CPU

    def describe(self) -> str:
        return f"{self.format} export of {self.meta.get('run', '?')} ({self.meta.get('checkpoint', '?')}.pt)"


def is_export(path: str | Path) -> bool:
    """Looks like an export (so evaluate loads it as one, and says why if it is not a good one)."""
    path = Path(path)
    return path.suffix.lower() == ".onnx" or (path / WEIGHTS).is_file()


def load_export(path: str | Path, device: str = "auto") -> Export:
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, device)
    if (path / WEIGHTS).is_file():
        return _load_folder(path, device)
    raise UserError(f"{path}: not a cifarlab export (a .onnx file, or a folder with {WEIGHTS})")


def _cifarlab_meta(raw: dict[str, str], path: Path, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw["cifarlab"])
        assert isinstance(meta, dict)
    except (KeyError, ValueError, AssertionError):
        raise UserError(f"{path}: not a cifarlab export (no cifarlab entry in its {where}); evaluate takes a "
                        "RUN_DIR, a .onnx written by `cifarlab export` or an EXPORT_DIR") from None
    return meta


def _load_onnx(path: Path, device: str) -> Export:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"evaluating a .onnx file needs onnxruntime: {INSTALL}") from None
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise UserError("device 'cuda' requested but onnxruntime has no CUDA provider here "
                        "(pip install onnxruntime-gpu)")
    providers = [p for p in ("CUDAExecutionProvider",) if p in available and device != "cpu"] + ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads torch would use
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own types for a file that is not a (valid) ONNX model
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable ONNX model ({reason})") from None
    meta = _cifarlab_meta(session.get_modelmeta().custom_metadata_map, path, "ONNX metadata_props")
    name_in, name_out = session.get_inputs()[0].name, session.get_outputs()[0].name
    batch = int(meta.get("eval_batch_size") or 500)

    def predict(x: torch.Tensor) -> torch.Tensor:
        x = x.cpu().contiguous()
        out = [torch.from_numpy(session.run([name_out], {name_in: x[i:i + batch].numpy()})[0])
               for i in range(0, len(x), batch)]
        return torch.cat(out).float() if out else torch.zeros(0, 10)

    return Export(path, "onnx", meta, predict)


def _load_folder(path: Path, device: str) -> Export:
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"loading a safetensors export needs safetensors: {INSTALL}") from None
    weights = path / WEIGHTS
    try:
        with safe_open(weights, "pt") as f:
            raw = f.metadata() or {}
        state = load_file(weights)
    except Exception as e:  # safetensors raises its own types for a corrupt header or truncated data
        raise UserError(f"{weights}: cannot read safetensors ({str(e).strip()[:200] or type(e).__name__})") from None
    meta = _cifarlab_meta(raw, weights, "safetensors metadata")
    cfg = load_config(path / CONFIG)
    model = build_model(cfg, select_device(device), pretrained=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{weights}: weights do not fit model '{cfg.model}' ({str(e).splitlines()[0][:200]})") from None
    model.eval()

    def predict(x: torch.Tensor) -> torch.Tensor:
        return predict_logits(model, x, cfg.eval_batch_size, cfg.channels_last, cfg.tta, cfg.amp)

    return Export(path, "safetensors", meta, predict)


def evaluate_export(export: Export, x: torch.Tensor, y: torch.Tensor, name: str = "validation",
                    testset: TestSet | None = None) -> dict[str, Any]:
    """evaluate_run's report for an export on uint8 images x / labels y (or a loaded photo test set), with
    where the export came from and the run's own validation accuracy beside it. Writes nothing."""
    if testset is not None:
        x, y = testset.x, testset.y
    logits = export.predict(x)
    report = {"set": name, "export": str(export.path), "format": export.format, "run": export.meta.get("run"),
              "checkpoint": export.meta.get("checkpoint"),
              "run_validation_accuracy": export.meta.get("run_validation_accuracy"),
              **classification_report(y.cpu(), logits)}
    if testset is not None:
        report.update(testset=testset.root, filtered=testset.filtered, fit=testset.fit,
                      n_skipped=len(testset.skipped), skipped=[{"path": p, "reason": r} for p, r in testset.skipped],
                      most_confused=[list(t) for t in most_confused(report["confusion_matrix"])])
    return report
