"""Live loggers: `fit` callbacks (train/callbacks.py) that mirror a run into a tracker as it trains, chosen
by config key `log` (`--log` on `cifarlab train`). One so far, TensorBoard, through torch's own
SummaryWriter (the `tensorboard` extra: the same package shows the curves). MLflow and W&B were weighed
and left out: mlflow-skinny pulls ~30 packages (FastAPI, uvicorn, the Databricks SDK, OpenTelemetry), wandb
about 25, for what TensorBoard's event files already give offline.

Here, in the report layer, because the final pictures are the evaluation's confusion matrix
(report.figures.confusion_figure) and misclassified grid (evaluate.testset.misclassified_grid).
fit calls callbacks on the process that writes the run directory only (rank 0 under torchrun)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cifarlab.config import Config, log_names
from cifarlab.data import Cifar10
from cifarlab.device import dist_info, use_channels_last
from cifarlab.errors import UserError
from cifarlab.evaluate.metrics import confusion_matrix
from cifarlab.evaluate.testset import misclassified_grid
from cifarlab.models.predict import predict_logits
from cifarlab.pictures import figure_image
from cifarlab.report.figures import confusion_figure
from cifarlab.rundir import RunDir
from cifarlab.train.callbacks import Callback
from cifarlab.train.loop import steps_per_epoch
from cifarlab.train.recipe import lr_at_step

GRID_SHOWN = 64  # misclassified validation images in the final grid: a seeded sample (a full grid is ~4k px tall)


def require_loggers(cfg: Config) -> None:
    """Fail with one line, before any data is loaded or trained, when a logger's extra is missing."""
    if "tensorboard" in log_names(cfg.log):
        _summary_writer()


def loggers_for(cfg: Config, data: Cifar10) -> list[Callback]:
    """The callbacks that config key `log` asks for; `data` gives the validation set for the final pictures."""
    require_loggers(cfg)
    return [TensorBoardLogger(data)] if "tensorboard" in log_names(cfg.log) else []


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises this when the tensorboard package is absent
        raise UserError("log: tensorboard needs the tensorboard package: pip install 'cifarlab[tensorboard]'") from None
    return SummaryWriter


class TensorBoardLogger:
    """RUN_DIR/tb/: per epoch (step = epoch) loss/train, loss/val, accuracy/train, accuracy/val, lr/epoch (the
    values of history.csv) and speed/images_per_s (training images / epoch wall time, validation included);
    lr/step per optimiser step under the per-step `triangle` schedule; at the end, on the final model,
    images final/confusion_matrix and final/misclassified (validation set, the run's test-time augmentation).

    A resumed run continues the same curves: fit calls on_epoch_end only for epochs it trains, each after
    last.pt holds it, and every epoch is flushed, so no epoch is written twice (a kill between last.pt and
    the flush leaves a gap, never a duplicate). Turned on for a run that has epochs already (`--resume RUN
    --log tensorboard`), it first writes their history.csv rows, so the curves start at epoch 1."""

    def __init__(self, data: Cifar10):
        self.SummaryWriter = _summary_writer()
        self.data = data
        self.writer: Any = None
        self.trained = False

    def on_train_start(self, cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
        self.cfg = cfg
        n = len(self.data.train_y)
        self.n_train = min(cfg.train_subset, n) if cfg.train_subset else n  # as fit's class_balanced_subset
        tb = RunDir(run_dir).tb_dir
        first_time = not any(tb.glob("events.out.tfevents.*"))
        self.writer = self.SummaryWriter(log_dir=str(tb))
        if first_time:
            for row in state["history"]:
                self._epoch_scalars(row)
            self.writer.flush()

    def on_epoch_end(self, row: dict[str, Any], state: dict[str, Any], model: nn.Module) -> None:
        self._epoch_scalars(row)
        if self.cfg.schedule == "triangle":  # the lr of every step, as train_epoch set it
            e, n = row["epoch"], steps_per_epoch(self.n_train, self.cfg.batch_size, dist_info()[1])
            for i in range(n):
                self.writer.add_scalar("lr/step", lr_at_step(self.cfg, e, i, n), (e - 1) * n + i + 1)
        self.writer.flush()
        self.trained = True

    def on_train_end(self, metrics: dict[str, Any], model: nn.Module) -> None:
        if self.trained:  # not again when a finished run is fitted again
            self._final_pictures(model, metrics["epochs"])
        self.writer.close()

    def _epoch_scalars(self, row: dict[str, Any]) -> None:
        e, w = row["epoch"], self.writer
        for tag, key in (("loss/train", "train_loss"), ("loss/val", "val_loss"), ("accuracy/train", "train_acc"),
                         ("accuracy/val", "val_acc"), ("lr/epoch", "lr")):
            w.add_scalar(tag, float(row[key]), e)
        if float(row["seconds"]) > 0:
            w.add_scalar("speed/images_per_s", self.n_train / float(row["seconds"]), e)

    @torch.no_grad()
    def _final_pictures(self, model: nn.Module, epoch: int) -> None:
        cfg, data = self.cfg, self.data
        device = next(model.parameters()).device
        logits = predict_logits(model, data.val_x, cfg.eval_batch_size, use_channels_last(cfg, device),
                                cfg.tta, cfg.amp)
        y = data.val_y.cpu()
        pred = logits.argmax(1)
        cm = confusion_matrix(y, pred, len(data.classes))
        acc = cm.diag().sum().item() / len(y)
        fig = confusion_figure(cm.tolist(), data.classes, f"validation, final model (epoch {epoch}): {acc:.2%}")
        self.writer.add_image("final/confusion_matrix", np.asarray(figure_image(fig)), epoch, dataformats="HWC")
        wrong = (pred != y).nonzero().flatten()
        pick = torch.randperm(len(wrong), generator=torch.Generator().manual_seed(cfg.seed))[:GRID_SHOWN]
        shown = wrong[pick.sort().values]  # a seeded sample in index order: the sets here are sorted by class
        grid = misclassified_grid(data.val_x[shown], y[shown].tolist(), pred[shown].tolist(),
                                  title=f"validation: {len(shown)} of {len(wrong)} misclassified (a random sample)")
        self.writer.add_image("final/misclassified", np.asarray(grid.convert("RGB")), epoch, dataformats="HWC")

