"""What a caller can hook into `fit` without the loop knowing who listens (a live logger, a sweep's
pruner). Every method is optional; `fit` calls them on the process that writes the run directory
(rank 0 under torchrun), each only after the run directory holds what it reports, so a callback that
raises (a pruned sweep trial, say) leaves a run that resumes like any other."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch.nn as nn

from cifarlab.config import Config


class Callback(Protocol):
    def on_train_start(self, cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
        """Before the first epoch this process trains; `state["epoch"]` > 0 when the run resumes."""

    def on_epoch_end(self, row: dict[str, Any], state: dict[str, Any], model: nn.Module) -> None:
        """After epoch row["epoch"] is in history.csv, metrics.json and last.pt (row: a history.csv row)."""

    def on_train_end(self, metrics: dict[str, Any], model: nn.Module) -> None:
        """After the last epoch's files are written (also when a finished run is fitted again)."""


def call(callbacks: list[Any], method: str, *args: Any) -> None:
    """callbacks[i].method(*args) for each callback that has the method."""
    for cb in callbacks:
        fn = getattr(cb, method, None)
        if fn is not None:
            fn(*args)
