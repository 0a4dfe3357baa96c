"""Live logging (cifarlab.loggers): TensorBoard event files read back with TensorBoard's own reader equal
history.csv, a resumed run continues the curves with every epoch exactly once, and a missing extra is one
line before anything trains."""

import csv
import math
import sys

import pytest

from cifarlab.cli import main
from cifarlab.config import resolve_config
from cifarlab.rundir import RunDir
from cifarlab.train import fit
from cifarlab.train.recipe import lr_at_step
from testdata import REAL_TARBALL, quick_cfg, require_module, skip_if_missing, toy_data

SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
           "accuracy/val": "val_acc", "lr/epoch": "lr"}


def read_events(run_dir):
    """{tag: [(step, value), ...]} and {image tag: [step, ...]} from RUN_DIR/tb/, every event file in it."""
    ea_mod = require_module("tensorboard.backend.event_processing.event_accumulator",
                            "the TensorBoard test needs pip install 'cifarlab[tensorboard]'")
    ea = ea_mod.EventAccumulator(str(RunDir(run_dir).tb_dir), size_guidance={ea_mod.SCALARS: 0, ea_mod.IMAGES: 0})
    ea.Reload()
    scalars = {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
    images = {t: [e.step for e in ea.Images(t)] for t in ea.Tags()["images"]}
    return scalars, images


def history(run_dir):
    with open(RunDir(run_dir).history) as f:
        return list(csv.DictReader(f))


def check_equal_history(run_dir, epochs):
    scalars, _ = read_events(run_dir)
    rows = history(run_dir)
    assert [int(r["epoch"]) for r in rows] == epochs
    for tag, key in SCALARS.items():
        assert [s for s, _ in scalars[tag]] == epochs, tag  # each epoch exactly once, in order
        assert [v for _, v in scalars[tag]] == pytest.approx([float(r[key]) for r in rows], rel=1e-6), tag
    assert [s for s, _ in scalars["speed/images_per_s"]] == epochs
    assert all(v > 0 for _, v in scalars["speed/images_per_s"])
    return scalars


def test_tensorboard_equals_history_and_resume_continues_the_curves(tmp_path):
    require_module("tensorboard", "the TensorBoard test needs pip install 'cifarlab[tensorboard]'")
    from cifarlab.loggers import TensorBoardLogger

    data, run = toy_data(), tmp_path / "run"
    sets = ("log=tensorboard", "schedule=triangle", "train_subset=100")  # 100 images, batch 32: 4 steps/epoch
    fit(quick_cfg("imp1", *sets, epochs=1), data, run, quiet=True, callbacks=[TensorBoardLogger(data)])
    check_equal_history(run, [1])
    cfg = quick_cfg("imp1", *sets, epochs=3)
    fit(cfg, data, run, resume=True, quiet=True, callbacks=[TensorBoardLogger(data)])
    scalars = check_equal_history(run, [1, 2, 3])

    # the per-step lr: every optimiser step once, as lr_at_step gave it (epoch 1 under the 1-epoch plan)
    steps = math.ceil(100 / 32)
    assert [s for s, _ in scalars["lr/step"]] == list(range(1, 3 * steps + 1))
    first = quick_cfg("imp1", *sets, epochs=1)
    want = [lr_at_step(first, 1, i, steps) for i in range(steps)] + \
        [lr_at_step(cfg, e, i, steps) for e in (2, 3) for i in range(steps)]
    assert [v for _, v in scalars["lr/step"]] == pytest.approx(want, rel=1e-6)
    _, images = read_events(run)
    assert images == {"final/confusion_matrix": [1, 3], "final/misclassified": [1, 3]}  # one per session's end


@pytest.mark.slow
def test_cli_log_on_resume_of_a_real_run_starts_the_curves_at_epoch_1(real_cifar, real_cifar_cache, tmp_path,
                                                                         monkeypatch):
    """`--log tensorboard` given at --resume of a run trained without it: its earlier epochs are written
    first, then the new ones; the final pictures come from the validation set (real CIFAR-10)."""
    require_module("tensorboard", "the TensorBoard test needs pip install 'cifarlab[tensorboard]'")
    monkeypatch.setenv("CIFARLAB_HOME", str(real_cifar_cache))  # reuse the session's decoded cache
    run, data = tmp_path / "base", str(skip_if_missing(REAL_TARBALL))
    fit(resolve_config("base", epochs=1, train_subset=500), real_cifar, run, quiet=True)  # log: none
    assert not RunDir(run).tb_dir.exists()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--log", "tensorboard", "--data", data,
                 "--quiet"]) == 0
    check_equal_history(run, [1, 2])
    assert "lr/step" not in read_events(run)[0]  # base: lr drops at epoch ends, so the lr is per epoch
    assert read_events(run)[1] == {"final/confusion_matrix": [2], "final/misclassified": [2]}
    assert RunDir(run).load_config().log == "tensorboard"


def test_a_missing_extra_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    out = tmp_path / "run"
    assert main(["train", "--preset", "imp1", "--log", "tensorboard", "--out", str(out), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'cifarlab[tensorboard]'" in err
    assert not out.exists()
    assert main(["train", "--preset", "imp1", "--set", "log=tensorbord", "--out", str(out)]) == 2
    assert "did you mean 'tensorboard'" in capsys.readouterr().err
