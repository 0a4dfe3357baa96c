"""End to end on the real CIFAR-10 (JPEG q75 copy in ../shared/data): train briefly, then evaluate."""

import json

import pytest

from cifarlab.cli import main
from cifarlab.config import resolve_config
from cifarlab.evaluate import evaluate_run
from cifarlab.train import fit

from testdata import REAL_TARBALL, skip_if_missing

pytestmark = pytest.mark.slow


def test_base_learns_real_cifar(real_cifar, tmp_path):
    # batch 64 so BN's Keras-style slow moving averages (momentum 0.99) settle within the short run
    cfg = resolve_config("base", ["batch_size=64"], epochs=2, train_subset=5000)
    metrics = fit(cfg, real_cifar, tmp_path / "run", quiet=True)
    assert metrics["train_images"] == 5000 and metrics["finished"]
    assert metrics["val_accuracy"] > 0.2, metrics  # chance is 0.10; measured 0.355 (all 10,000 val images)
    report = evaluate_run(tmp_path / "run", real_cifar.val_x, real_cifar.val_y)
    assert report["n"] == 10000
    assert report["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-4)  # same model, same number


def test_cli_trains_imp2_with_augmentation_on_real_data(real_cifar, real_cifar_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIFARLAB_HOME", str(real_cifar_cache))  # reuse the session's decoded cache
    out = tmp_path / "imp2"
    rc = main(["train", "--preset", "imp2", "--data", str(skip_if_missing(REAL_TARBALL)), "--out", str(out),
               "--epochs", "1", "--train-subset", "2000", "--quiet"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_accuracy"] > 0.15, metrics  # one short augmented epoch; chance is 0.10
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
