import csv
import json

import pytest
import torch

from cifarlab.io import load_checkpoint
from cifarlab.models import create_model
from cifarlab.train import fit
from cifarlab.train.loop import l2_penalty
from testdata import quick_cfg, toy_data


def test_l2_penalty_is_keras_sum_of_squares():
    model = create_model("imp")
    expected = sum(m.weight.pow(2).sum() for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.allclose(l2_penalty(model), expected)


def test_fit_writes_the_run_directory(tmp_path):
    metrics = fit(quick_cfg("imp1", epochs=2), toy_data(), tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    for name in ("config.yaml", "history.csv", "metrics.json", "last.pt", "best.pt", "train.log"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*.part")) and not list(run.glob(".*part"))
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == metrics
    assert 0 <= saved["val_accuracy"] <= 1 and saved["epochs"] == 2 and saved["finished"]
    assert saved["best_epoch"] in (1, 2) and saved["train_seconds"] > 0
    assert metrics["val_accuracy"] > 0.3  # the toy classes are separable by colour; chance is 0.1


def test_lr_drops_reach_the_optimizer(tmp_path):
    fit(quick_cfg("imp1", "lr_drops=[[1, 0.1]]"), toy_data(), tmp_path / "run", quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 1e-4])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)


def test_same_seed_same_result(tmp_path):
    a = fit(quick_cfg("imp2", epochs=1), toy_data(), tmp_path / "a", quiet=True)
    b = fit(quick_cfg("imp2", epochs=1), toy_data(), tmp_path / "b", quiet=True)
    assert a["val_loss"] == b["val_loss"]


def test_resume_reaches_the_same_result(tmp_path):
    """Train 3 epochs straight vs. 1 epoch, then resume to 3: identical weights and history."""
    data = toy_data()
    straight = fit(quick_cfg("imp2", epochs=3), data, tmp_path / "straight", quiet=True)
    fit(quick_cfg("imp2", epochs=1), data, tmp_path / "split", quiet=True)
    resumed = fit(quick_cfg("imp2", epochs=3), data, tmp_path / "split", resume=True, quiet=True)
    assert resumed["val_loss"] == straight["val_loss"]
    w1 = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    w2 = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert "resuming" in (tmp_path / "split" / "train.log").read_text()


def test_train_subset_is_used(tmp_path):
    metrics = fit(quick_cfg("imp1", "train_subset=50", epochs=1), toy_data(), tmp_path / "run", quiet=True)
    assert metrics["train_images"] == 50


class _Recorder:
    """A callback that records what fit tells it, and can stop the run after a given epoch."""

    def __init__(self, stop_after: int = 0):
        self.events, self.stop_after = [], stop_after

    def on_train_start(self, cfg, run_dir, state):
        self.events.append(("start", state["epoch"], (run_dir / "config.yaml").exists()))

    def on_epoch_end(self, row, state, model):
        self.events.append(("epoch", row["epoch"], state["history"][-1] == row))
        if row["epoch"] == self.stop_after:
            raise KeyboardInterrupt("stopped by a callback")

    def on_train_end(self, metrics, model):
        self.events.append(("end", None, True))


def test_callbacks_hear_every_epoch_after_it_is_written(tmp_path):
    """Rows equal history.csv's; a callback that raises after epoch 1 leaves a run that resumes to the
    same weights as an uninterrupted one (the sweep's pruner and a live logger rely on both)."""
    data = toy_data()
    rec = _Recorder()
    fit(quick_cfg("imp1", epochs=2), data, tmp_path / "a", quiet=True, callbacks=[rec])
    assert [e[:2] for e in rec.events][:3] == [("start", 0), ("epoch", 1), ("epoch", 2)]
    assert all(e[2] for e in rec.events)
    assert rec.events[-1][0] == "end"
    with open(tmp_path / "a" / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]

    stopper = _Recorder(stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        fit(quick_cfg("imp1", epochs=2), data, tmp_path / "b", quiet=True, callbacks=[stopper])
    assert load_checkpoint(tmp_path / "b" / "last.pt")["state"]["epoch"] == 1
    again = _Recorder()
    fit(quick_cfg("imp1", epochs=2), data, tmp_path / "b", resume=True, quiet=True, callbacks=[again])
    assert again.events[0][:2] == ("start", 1) and [e[1] for e in again.events if e[0] == "epoch"] == [2]
    w1 = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    w2 = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
