"""`cifarlab export`: a run's model (last.pt or best.pt) written as ONNX, TorchScript, or an EXPORT_DIR
(safetensors + config.yaml + model card), atomically: made in memory, then written whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from cifarlab import CLASSES, __version__
from cifarlab.config import Config
from cifarlab.errors import UserError
from cifarlab.export import CARD, CONFIG, CONTRACT, DEFAULT_NAME, FORMATS, WEIGHTS
from cifarlab.export.card import model_card, run_results
from cifarlab.export.graph import ImagesToLogits, onnx_bytes, torchscript_bytes
from cifarlab.io import atomic_write, atomic_write_folder
from cifarlab.rundir import CHECKPOINTS, RunDir

WRITERS = {"onnx": onnx_bytes, "torchscript": torchscript_bytes}


def default_out(run_dir: str | Path, fmt: str, checkpoint: str = "last") -> Path:
    """RUN_DIR/export/last.onnx, last.torchscript.pt or last-safetensors/ (best... for --checkpoint best)."""
    return RunDir(run_dir).export_dir / DEFAULT_NAME[fmt].format(checkpoint)


def metadata(rd: RunDir, cfg: Config, checkpoint: str, fmt: str, epoch: int | None,
             val: dict[str, Any] | None) -> dict[str, Any]:
    """What an export says about itself: where it came from, its contract, and the run's validation accuracy
    `val` (so `cifarlab evaluate EXPORT` can show the two side by side)."""
    return {"cifarlab": __version__, "format": fmt, "run": str(rd.path.resolve()), "checkpoint": checkpoint,
            "epoch": epoch, "preset": cfg.preset, "extends": cfg.extends, "model": cfg.model, "tta": cfg.tta,
            "data": cfg.data, "eval_batch_size": cfg.eval_batch_size, "classes": list(CLASSES), "input": CONTRACT,
            "run_validation_accuracy": val and val["accuracy"], "run_validation_source": val and val["source"]}


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, checkpoint: str = "last") -> Path:
    """Write the run's model (last.pt or best.pt) as `fmt` to `out` (default: default_out); returns the path.
    Nothing is written unless the whole export succeeds: the bytes are made in memory, then written atomically."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}' (known: {', '.join(FORMATS)})")
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint must be 'last' or 'best', got '{checkpoint}'")
    rd = RunDir(run_dir)
    model, cfg = rd.load_model(checkpoint, "cpu")  # one line if not a run, no checkpoint, or weights that do not fit
    out = Path(out) if out else default_out(rd.path, fmt, checkpoint)
    _check_out(out, fmt)
    recorded = run_results(rd, checkpoint)
    epoch = recorded["metrics"].get("best_epoch" if checkpoint == "best" else "epochs")
    meta = metadata(rd, cfg, checkpoint, fmt, epoch, recorded["sets"]["validation"])
    if fmt == "safetensors":
        files = {WEIGHTS: _safetensors_bytes(model, meta),
                 CONFIG: yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode(),
                 CARD: model_card(rd, cfg, checkpoint, epoch, CONTRACT).encode()}
        _write(out, lambda: atomic_write_folder(out, files))
    else:
        data = WRITERS[fmt](ImagesToLogits(model.float(), cfg.tta), {"cifarlab": json.dumps(meta)})
        _write(out, lambda: atomic_write(out, lambda f: f.write(data)))
    return out


def _safetensors_bytes(model: Any, meta: dict[str, Any]) -> bytes:
    try:
        from safetensors.torch import save
    except ImportError:
        raise UserError("--format safetensors needs safetensors: pip install 'cifarlab[export]'") from None
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # channels_last -> plain
    return save(state, metadata={"format": "pt", "cifarlab": json.dumps(meta)})


def _check_out(out: Path, fmt: str) -> None:
    """Fail before the export's seconds of work if `out` cannot be what it should: a file for onnx and
    torchscript, a folder (new, or an earlier export) for safetensors, in a folder that can be written."""
    if fmt == "safetensors":
        if out.exists() and not (out.is_dir() and ((out / WEIGHTS).is_file() or not any(out.iterdir()))):
            raise UserError(f"--out {out}: exists and is not a cifarlab safetensors export (no {WEIGHTS}); "
                            "choose another --out")
    elif out.is_dir():
        example = out / DEFAULT_NAME[fmt].format("model")
        raise UserError(f"--out {out}: is a folder; give the file to write, e.g. {example}")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write there ({parent} is not a writable folder)")


def _write(out: Path, write: Any) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write()
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror or e})") from None
