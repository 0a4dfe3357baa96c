"""The CLI end to end on a tiny image-folder dataset the test writes: exit codes, files, one-line errors."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from cifarlab.cli import main


def run(*args):
    return main([str(a) for a in args])


def test_train_then_evaluate(tiny_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("train", "--preset", "imp1", "--data", tiny_tree, "--out", out, "--epochs", 2, "--quiet",
               "--set", "batch_size=16") == 0
    assert capsys.readouterr().err == ""  # --quiet prints nothing
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["train_images"] == 60
    assert run("evaluate", out, "--data", tiny_tree) == 0
    printed = capsys.readouterr().out
    assert "validation accuracy" in printed and "airplane" in printed
    report = json.loads((out / "eval" / "validation.json").read_text())
    assert report["n"] == 30 and len(report["confusion_matrix"]) == 10
    assert sum(map(sum, report["confusion_matrix"])) == 30
    assert (out / "eval" / "validation_confusion.csv").read_text().startswith("true,airplane")

    # an existing run is never overwritten; --resume with more epochs extends it
    assert run("train", "--preset", "imp1", "--data", tiny_tree, "--out", out) == 2
    assert "already exists" in capsys.readouterr().err
    assert run("train", "--resume", out, "--epochs", 3, "--quiet") == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


def test_train_progress_lines_when_not_a_tty(tiny_tree, tmp_path, capsys):
    assert run("train", "--preset", "base", "--data", tiny_tree, "--out", tmp_path / "r", "--epochs", 1,
               "--train-subset", 20) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "val loss" in err and "\r" not in err


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--preset", "imp1", "--epochs", "0"], "'epochs' must be positive"),
    (["train", "--preset", "imp1", "--set", "lr_dorps=[]"], "did you mean 'lr_drops'"),
    (["train", "--preset", "imp1", "--train-subset", "-5"], "train_subset"),
    (["train", "--preset", "imp1", "--data", "/no/such/path"], "/no/such/path"),
    (["train"], "--preset is required"),
    (["train", "--resume", "/no/such/run"], "not a run directory"),
    (["evaluate", "/no/such/run"], "not a run directory"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # no half-made run directory


def test_bad_data_leaves_no_run_directory(tmp_path, capsys):
    bad = tmp_path / "notdata"
    (bad / "something").mkdir(parents=True)
    assert run("train", "--preset", "imp1", "--data", bad, "--out", tmp_path / "run") == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_models_prints_table_1(capsys):
    assert run("models") == 0
    out = capsys.readouterr().out
    assert "BASE" in out and "IMP" in out and "438,634" in out and "16, 16, 64" in out


def test_augment_preview_writes_a_png(tiny_tree, tmp_path):
    out = tmp_path / "aug.png"
    assert run("augment-preview", "--data", tiny_tree, "--out", out, "--n", 4) == 0
    img = Image.open(out)
    assert img.width > img.height / 10 * 4  # 10 rows of 1 original + 4 copies


def test_python_dash_m_and_console_script(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cifarlab", "models", "imp"], capture_output=True, text=True)
    assert r.returncode == 0 and "IMP" in r.stdout
    r = subprocess.run([sys.executable, "-m", "cifarlab", "train", "--preset", "imp9"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
