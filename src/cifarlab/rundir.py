"""A run directory: its file layout, whether it is finished, whether a result made from it is stale,
and its model. Every module downstream of training reaches a run's files through `RunDir`.

    config.yaml   the resolved config              written by train, read by everything
    history.csv   one row per epoch                 train -> report (curves)
    metrics.json  final/best accuracy, finished     train -> is_finished, compare (no eval yet)
    last.pt       the final model (+ optimiser)     train -> load_model, every is_stale
    best.pt       the best validation epoch         train -> load_model('best')
    train.log     the training log                  train
    .lock         held while a process trains       train.runctl
    eval/         <set>.json and its CSV/PNG files, robustness.json and robustness_*.csv   evaluate -> report
    viz/          *.png sheets                      viz (visualize, reproduce) -> report
    export/       exported models (default --out)   export (cifarlab export) -> elsewhere
    tb/           TensorBoard event files           loggers (config key log: tensorboard) -> tensorboard --logdir
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from cifarlab.config import Config, load_config
from cifarlab.device import select_device
from cifarlab.errors import UserError
from cifarlab.io import load_checkpoint
from cifarlab.models.build import build_model

CHECKPOINTS = ("last", "best")


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    # ---------------------------------------------------------------- the layout

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def lock(self) -> Path:
        return self.path / ".lock"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def viz_dir(self) -> Path:
        return self.path / "viz"

    @property
    def tb_dir(self) -> Path:
        return self.path / "tb"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    def checkpoint(self, name: str = "last") -> Path:
        return self.path / f"{name}.pt"

    def eval_json(self, name: str) -> Path:
        """eval/<name>.json: an evaluation ('validation', 'test', 'test_filtered') or 'robustness'."""
        return self.eval_dir / f"{name}.json"

    # ---------------------------------------------------------------- state

    def is_finished(self) -> bool:
        """metrics.json says every planned epoch ran (train writes it after last.pt, every epoch)."""
        try:
            return json.loads(self.metrics.read_text()).get("finished", False)
        except (OSError, ValueError, AttributeError):
            return False

    def epochs_done(self) -> int:
        """Epochs in history.csv (train rewrites it atomically after each epoch); 0 for a new run."""
        try:
            with open(self.history) as f:
                return max(sum(1 for _ in f) - 1, 0)  # minus the header
        except OSError:
            return 0

    def is_stale(self, result: Path, checkpoint: str = "last") -> bool:
        """A result made from this run is redone when it is missing, older than last.pt (or last.pt is
        missing), or, for a JSON result that records it, made from another checkpoint."""
        result = Path(result)
        if not result.is_file() or not self.last.is_file() or result.stat().st_mtime < self.last.stat().st_mtime:
            return True
        if result.suffix != ".json":
            return False
        try:
            made_from = json.loads(result.read_text()).get("checkpoint", "last")
        except (OSError, ValueError, AttributeError):
            return True
        return made_from != checkpoint

    # ---------------------------------------------------------------- contents

    def load_config(self) -> Config:
        if not self.config.is_file():
            raise UserError(f"{self.path}: not a run directory (no config.yaml)")
        return load_config(self.config)

    def load_model(self, checkpoint: str = "last", device: str = "auto") -> tuple[nn.Module, Config]:
        """The run's model with the weights of last.pt (the final model) or best.pt, in eval mode, on
        `device` (auto: CUDA, else MPS, else CPU), and its config."""
        cfg = self.load_config()
        if checkpoint not in CHECKPOINTS:
            raise UserError(f"--checkpoint must be 'last' or 'best', got '{checkpoint}'")
        path = self.checkpoint(checkpoint)
        ckpt = load_checkpoint(path)
        model = build_model(cfg, select_device(device), pretrained=False)  # the checkpoint has every weight
        try:
            model.load_state_dict(ckpt["model"])
        except (KeyError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0][:200]
            raise UserError(f"{path}: weights do not fit model '{cfg.model}' ({first})") from None
        return model.eval(), cfg
