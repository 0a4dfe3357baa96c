"""Scores for a trained run on a labelled image set, written next to the run as JSON and CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cifarlab import CLASSES
from cifarlab.io import write_csv, write_json
from cifarlab.models.predict import predict_logits
from cifarlab.rundir import RunDir


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


def evaluate_run(run_dir: Path, x: torch.Tensor, y: torch.Tensor, name: str = "validation",
                 checkpoint: str = "last", device: str = "auto") -> dict[str, Any]:
    """Evaluate the run on uint8 images x / labels y; writes eval/<name>.json and eval/<name>_confusion.csv."""
    rd = RunDir(run_dir)
    model, cfg = rd.load_model(checkpoint, device)
    logits = predict_logits(model, x, cfg.eval_batch_size, cfg.channels_last, cfg.tta, cfg.amp)
    report = {"set": name, "checkpoint": checkpoint, **classification_report(y.cpu(), logits)}
    out = rd.eval_dir
    out.mkdir(exist_ok=True)
    write_json(rd.eval_json(name), report)
    write_confusion_csv(out / f"{name}_confusion.csv", report["confusion_matrix"])
    return report


def write_confusion_csv(path: Path, cm: list[list[int]], classes: tuple[str, ...] = CLASSES) -> None:
    """One row per true class, one column per predicted class (the evaluations' <name>_confusion.csv)."""
    rows = [{"true": c, **dict(zip(classes, row))} for c, row in zip(classes, cm)]
    write_csv(path, rows, ["true", *classes])
