"""Scores for a trained run on a labelled image set, written next to the run as JSON and CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from cifarlab import CLASSES
from cifarlab.config import Config, load_config
from cifarlab.errors import UserError
from cifarlab.io import load_checkpoint, write_csv, write_json
from cifarlab.train.loop import build_model, predict_logits, select_device


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, n: int = 10) -> torch.Tensor:
    """Rows are true classes, columns predicted classes."""
    return torch.bincount(y_true.long() * n + y_pred.long(), minlength=n * n).reshape(n, n)


def classification_report(y_true: torch.Tensor, logits: torch.Tensor, classes: tuple[str, ...] = CLASSES) -> dict[str, Any]:
    pred = logits.argmax(1)
    cm = confusion_matrix(y_true, pred, len(classes))
    per_class = cm.diag().float() / cm.sum(1).clamp(min=1).float()
    return {
        "accuracy": (pred == y_true).float().mean().item(),
        "n": len(y_true),
        "per_class_accuracy": {c: round(a, 5) for c, a in zip(classes, per_class.tolist())},
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }


def load_run_model(run_dir: Path, checkpoint: str = "last", device: str = "auto") -> tuple[nn.Module, Config]:
    """The run's model with the weights of last.pt (the final model) or best.pt, in eval mode, on `device`
    (auto: CUDA, else MPS, else CPU — wherever the run was trained)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml)")
    if checkpoint not in ("last", "best"):
        raise UserError(f"--checkpoint must be 'last' or 'best', got '{checkpoint}'")
    cfg = load_config(run_dir / "config.yaml")
    ckpt = load_checkpoint(run_dir / f"{checkpoint}.pt")
    model = build_model(cfg, select_device(device), pretrained=False)  # the checkpoint has every weight
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise UserError(f"{run_dir / f'{checkpoint}.pt'}: weights do not fit model '{cfg.model}' ({first})") from None
    return model.eval(), cfg


def evaluate_run(run_dir: Path, x: torch.Tensor, y: torch.Tensor, name: str = "validation",
                 checkpoint: str = "last", device: str = "auto") -> dict[str, Any]:
    """Evaluate the run on uint8 images x / labels y; writes eval/<name>.json and eval/<name>_confusion.csv."""
    model, cfg = load_run_model(run_dir, checkpoint, device)
    logits = predict_logits(model, x, cfg.eval_batch_size, cfg.channels_last, cfg.tta, cfg.amp)
    report = {"set": name, "checkpoint": checkpoint, **classification_report(y.cpu(), logits)}
    out = Path(run_dir) / "eval"
    out.mkdir(exist_ok=True)
    write_json(out / f"{name}.json", report)
    rows = [{"true": c, **dict(zip(CLASSES, row))} for c, row in zip(CLASSES, report["confusion_matrix"])]
    write_csv(out / f"{name}_confusion.csv", rows, ["true", *CLASSES])
    return report
