"""The MNET wrapper and trainer path: freezing, trainable parts, cached embeddings vs the full model."""

import pytest
import torch

from cifarlab.config import resolve_config
from cifarlab.errors import UserError
from cifarlab.evaluate import evaluate_run
from cifarlab.models import create_model
from cifarlab.models.transfer import TransferNet
from cifarlab.train import fit

from testdata import toy_data

SMALL = ["alpha=0.25", "input_size=32", "weights=null", "batch_size=32", "eval_batch_size=64"]


@pytest.mark.parametrize("trainable, expected", [("head", {"head"}), ("last_conv", {"head", "trainable"})])
def test_only_the_named_part_trains(trainable, expected):
    torch.manual_seed(0)
    net = TransferNet(create_model("mobilenet_v1", alpha=0.25), 32, trainable, "avg", 0.4).train()
    stats = {k: v.clone() for k, v in net.frozen.state_dict().items()}
    net(torch.rand(4, 3, 32, 32)).sum().backward()
    assert not net.frozen.training  # .train() on the parent leaves the frozen part in inference mode
    assert all(p.grad is None for p in net.frozen.parameters())
    assert all(torch.equal(v, net.frozen.state_dict()[k]) for k, v in stats.items())  # BN statistics unchanged
    trained = {n.split(".")[0] for n, p in net.named_parameters() if p.grad is not None}
    assert trained == expected


def test_last_conv_is_keras_conv_pw_13():
    net = TransferNet(create_model("mobilenet_v1"), 128, "last_conv")
    (unit,) = net.trainable
    assert unit.conv.kernel_size == (1, 1) and unit.conv.out_channels == 1024 and unit.conv.groups == 1


def test_heads_and_upscaling():
    avg = TransferNet(create_model("mobilenet_v1", alpha=0.25), 128, "head", "avg")
    flat = TransferNet(create_model("mobilenet_v1", alpha=0.25), 128, "head", "flatten")
    assert avg.head[-1].in_features == 256 and flat.head[-1].in_features == 256 * 4 * 4
    assert avg.prepare(torch.rand(2, 3, 32, 32)).shape == (2, 3, 128, 128)  # CIFAR upscaled to 128


def test_cached_training_matches_the_full_model(tmp_path):
    """Trained on cached embeddings, evaluated as a whole model on images: the same accuracy."""
    cfg = resolve_config("mnet1", [*SMALL, "augment=null"], epochs=2)
    data = toy_data()
    metrics = fit(cfg, data, tmp_path / "run", quiet=True)
    assert "cached frozen-part outputs" in (tmp_path / "run" / "train.log").read_text()
    assert metrics["embed_seconds"] > 0
    report = evaluate_run(tmp_path / "run", data.val_x, data.val_y)
    assert report["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=0.02)  # float16 cache: +-1 image


def test_augmented_training_runs_the_frozen_part_each_step(tmp_path):
    cfg = resolve_config("mnet2", SMALL, epochs=1, train_subset=64)
    fit(cfg, toy_data(), tmp_path / "run", quiet=True)
    assert "cached" not in (tmp_path / "run" / "train.log").read_text()


def test_transfer_keys_are_refused_for_from_scratch_models():
    with pytest.raises(UserError, match="'weights' applies to mobilenet_\\* models only"):
        resolve_config("imp1", ["weights=imagenet"])
    with pytest.raises(UserError, match="trainable"):
        resolve_config("mnet1", ["trainable=some"])


def test_missing_weights_file_leaves_no_run_directory(tmp_path):
    cfg = resolve_config("mnet1", ["alpha=0.25", f"weights={tmp_path / 'nope.tflite'}"])
    with pytest.raises(UserError, match="nope.tflite"):
        fit(cfg, toy_data(), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_mnet2_v2_preset_with_the_real_v2_classifier_file(tmp_path, capsys):
    """The v2 TFLite file has an ImageNet classifier: its backbone loads (a one-line note says the
    classifier was skipped) and the mnet2-v2 recipe trains on it."""
    from testdata import SHARED_DATA, skip_if_missing

    weights = skip_if_missing(SHARED_DATA / "pretrained" / "mobilenet_v2_1.0_224_quant.tflite")
    cfg = resolve_config("mnet2-v2", ["augment=null", "input_size=64", "batch_size=32"], epochs=1,
                         weights=str(weights))
    metrics = fit(cfg, toy_data(60, 30), tmp_path / "run", quiet=True)
    assert metrics["finished"]
    assert "classifier" in capsys.readouterr().err


def test_cli_bad_weights_is_one_line_exit_2(tiny_tree, tmp_path, capsys):
    from cifarlab.cli import main

    bad = tmp_path / "w.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    rc = main(["train", "--preset", "mnet1", "--weights", str(bad), "--out", str(tmp_path / "run"),
               "--data", str(tiny_tree), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "w.tflite" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()
