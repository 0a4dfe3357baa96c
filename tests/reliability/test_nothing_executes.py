"""2. Nothing executes: a crafted CIFAR batch pickle, checkpoint and config YAML each fail with one
line, and their payload (creating a marker file) never runs. A source scan keeps it true for code
added later: no unrestricted pickle, torch.load or yaml.load anywhere."""

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.config import resolve_config, save_config
from cifarlab.data import load_cifar10
from cifarlab.errors import UserError
from cifarlab.io import load_checkpoint
from reliability_helpers import REPO, one_line_error
from testdata import write_tree


class Payload:
    """Unpickling this runs `touch MARKER`, as a hostile file would run anything."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_the_payload_is_real(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))  # unrestricted pickle: the payload runs
    assert marker.exists()


def test_crafted_cifar_batch(tmp_path, capsys):
    marker, d = tmp_path / "ran", tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rows = np.zeros((10, 3072), np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (d / name).write_bytes(pickle.dumps({b"data": rows, b"labels": list(range(10))}))
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": []}))
    line = one_line_error(["train", "--preset", "imp1", "--data", d, "--out", tmp_path / "run"], capsys)
    assert "forbidden global" in line and "posix.system" in line and "data_batch_3" in line
    assert not marker.exists() and not (tmp_path / "run").exists()


def run_dir_with(tmp_path, last_pt: object) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    save_config(resolve_config("imp1", ["epochs=1"]), run / "config.yaml")
    torch.save(last_pt, run / "last.pt")
    return run


def test_crafted_checkpoint(tmp_path, capsys):
    marker = tmp_path / "ran"
    run = run_dir_with(tmp_path, {"model": Payload(marker), "state": {"epoch": 1}})
    with pytest.raises(UserError) as e:
        load_checkpoint(run / "last.pt")
    assert "\n" not in str(e.value) and not marker.exists()
    tree = write_tree(tmp_path / "tree", n_train=1, n_test=1)
    for argv in (["evaluate", run, "--data", tree], ["train", "--resume", run, "--data", tree]):
        line = one_line_error(argv, capsys)
        assert "last.pt: cannot load checkpoint" in line and not marker.exists()


def test_crafted_config_yaml(tmp_path, capsys):
    marker = tmp_path / "ran"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f'model: !!python/object/apply:os.system ["touch {marker}"]\nepochs: 1\n')
    for argv in (["train", "--resume", run], ["evaluate", run]):
        line = one_line_error(argv, capsys)
        assert "config.yaml: cannot read config" in line and "python/object/apply:os.system" in line
    assert not marker.exists()


def tree_of(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_crafted_archive_members_are_ignored_and_nothing_lands_outside(tmp_path, monkeypatch, kind):
    """Members named ../x, a/../../x or /abs/x, and tar links to outside files, are never read as images
    (or written anywhere): the archive is read in memory, and such names are dropped, not normalised
    into the tree (an a/../x that counted would add images the tree does not list)."""
    import io
    import tarfile
    import zipfile

    tree = write_tree(tmp_path / "src" / "cifar", n_train=1, n_test=1)
    png = (tree / "test" / "cat" / "0.png").read_bytes()
    evil = {"../../escaped.png": png, "cifar/train/cat/../../test/cat/extra.png": png,
            "/abs/cifar/test/cat/abs.png": png, "cifar/../../up.png": png}
    z = tmp_path / f"data.{'zip' if kind == 'zip' else 'tar'}"
    members = {p.relative_to(tree.parent).as_posix(): p.read_bytes() for p in tree.rglob("*.png")} | evil
    if kind == "zip":
        with zipfile.ZipFile(z, "w") as zf:
            for name, data in members.items():
                zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name as written, ../ and all
    else:
        with tarfile.open(z, "w") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            for name, linktype in (("cifar/test/dog/link.png", tarfile.SYMTYPE),
                                   ("cifar/test/dog/hard.png", tarfile.LNKTYPE)):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = linktype, str(tree / "test" / "cat" / "0.png")
                tf.addfile(info)
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # where a naive extractor would put ../../ names
    before = tree_of(tmp_path)
    d = load_cifar10(z, cache_dir=tmp_path / "cache", progress=False)
    assert len(d.train_y) == 10 and len(d.val_y) == 10  # exactly the tree: no crafted member counted
    assert {p for p in tree_of(tmp_path) - before if not p.startswith("cache")} == set()
    assert not (tmp_path / "escaped.png").exists() and not Path("/abs").exists()


# ---------------------------------------------------------------- the rule, for code written later

UNSAFE = {
    r"\bpickle\.loads?\(|\bUnpickler\(": "unrestricted pickle (use cifarlab.data.safe_pickle)",
    r"\btorch\.load\(": "torch.load (use cifarlab.io.load_checkpoint: weights_only=True)",
    r"\byaml\.(load|unsafe_load|full_load)\(": "yaml.load (use yaml.safe_load)",
    r"allow_pickle\s*=\s*True": "np.load with allow_pickle=True",
    r"(?<![.\w])(eval|exec)\(": "eval/exec",
}
ALLOWED = {("io.py", r"\btorch\.load\(")}  # the one checkpoint loader, with weights_only=True


def test_no_unsafe_loading_anywhere_in_the_package():
    bad = []
    for path in sorted((REPO / "src" / "cifarlab").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            for pattern, why in UNSAFE.items():
                if re.search(pattern, code) and (path.name, pattern) not in ALLOWED:
                    bad.append(f"{path.relative_to(REPO)}:{n}: {why}: {line.strip()}")
    assert not bad, "\n".join(bad)
    io_src = (REPO / "src" / "cifarlab" / "io.py").read_text()
    assert re.search(r"torch\.load\([^)]*weights_only=True", io_src)
