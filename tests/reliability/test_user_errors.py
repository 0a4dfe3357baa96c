"""5. Config and CLI: every config value is checked (type, range, known key, "did you mean"), and every
user error is one line on stderr with exit code 2, before anything is written."""

import dataclasses

import pytest

from cifarlab.config import AugmentConfig, Config, build_config, load_preset
from cifarlab.errors import UserError
from reliability_helpers import one_line_error
from testdata import write_tree


def fields():
    yield from ((f.name, f) for f in dataclasses.fields(Config) if f.name != "augment")
    yield from ((f"augment.{f.name}", f) for f in dataclasses.fields(AugmentConfig))


def with_value(key: str, value) -> dict:
    raw = load_preset("imp1")
    if key.startswith("augment."):
        raw["augment"] = {**(raw.get("augment") or {}), key.split(".")[1]: value}
    else:
        raw[key] = value
    return raw


@pytest.mark.parametrize("key", [k for k, _ in fields()])
def test_every_config_key_checks_its_type(key):
    with pytest.raises(UserError) as e:
        build_config(with_value(key, {"not": "valid"}))
    assert f"'{key}'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("setting, needle", [
    ("epoch=3", "did you mean 'epochs'?"),
    ("augment.rotaton=3", "did you mean 'augment.rotation'?"),
    ("device=cpuu", "did you mean 'cpu'?"),
    ("model=imp3", "did you mean 'imp'?"),
    ("augment.fill=reflct", "did you mean 'reflect'?"),
    ("lr=nan", "'lr' must be a number"),
    ("lr=.inf", "'lr' must be a number"),
    ("lr=-1", "'lr' must be positive"),
    ("lr_drops=[[1, 1e999]]", "'lr_drops'"),
    ("lr_drops=[[1]]", "'lr_drops'"),
    ("batch_size=0", "'batch_size' must be positive"),
    ("batch_size=1.5", "'batch_size' must be an integer"),
    ("epochs=true", "'epochs' must be an integer"),
    ("seed=-1", "'seed' must be in"),
    ("seed=99999999999999999999", "'seed' must be in"),
    ("dropout=1", "'dropout' must be in [0, 1)"),
    ("augment.zoom=[2, 1]", "'augment.zoom'"),
    ("augment.rotation=500", "'augment.rotation'"),
    ("augment=5", "'augment' must be a mapping"),
    ("channels_last=maybe", "'channels_last' must be true or false"),
    ("train_subset=0", "'train_subset' must be positive"),
    ("weights=x.h5", "mobilenet_* models only"),
    ("lr", "--set expects key=value"),
    ("lr=[", "cannot parse value"),
])
def test_bad_settings_are_one_line_exit_2(setting, needle, tmp_path, capsys):
    line = one_line_error(["train", "--preset", "imp1", "--set", setting, "--data", tmp_path / "none",
                           "--out", tmp_path / "run"], capsys)
    assert needle in line and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("ue") / "tree", n_train=1, n_test=1)


def cases(tmp, tree):
    (tmp / "file").write_text("x")
    (tmp / "full").mkdir()
    (tmp / "full" / "x").write_text("x")
    return [
        (["trian"], "invalid choice"),
        (["train"], "--preset is required"),
        (["train", "--preset", "imp9"], "did you mean"),
        (["train", "--preset", "imp1", "--epochs", "0"], "'epochs' must be positive"),
        (["train", "--preset", "imp1", "--epochs", "x"], "invalid int value"),
        (["train", "--preset", "imp1", "--data", tmp / "missing"], "no such file or folder"),
        (["train", "--preset", "imp1", "--data", tmp / "file"], "unknown file type"),
        (["train", "--preset", "imp1", "--data", tree, "--out", tmp / "file"], "is not a folder"),
        (["train", "--preset", "imp1", "--data", tree, "--out", tmp / "full"], "already exists"),
        (["train", "--resume", tmp / "missing"], "not a run directory"),
        (["train", "--resume", tmp / "full", "--seed", "3"], "not a run directory"),
        (["evaluate", tmp / "missing"], "not a run directory"),
        (["evaluate", tmp / "full", "--checkpoint", "final"], "invalid choice"),
        (["models", "nosuchnet"], "nosuchnet"),
        (["models", "--input-size", "4"], "--input-size"),
        (["augment-preview", "--n", "0"], "--n must be positive"),
    ]


def test_cli_user_errors_are_one_line_exit_2(tree, tmp_path, capsys):
    for argv, needle in cases(tmp_path, tree):
        line = one_line_error(argv, capsys)
        assert needle in line, (argv, line)
