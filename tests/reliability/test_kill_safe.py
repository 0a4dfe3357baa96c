"""3. Kill-safe runs: kill -9 and Ctrl-C at seeded random moments, then --resume, end with exactly the
numbers and weights of an uninterrupted run; NaN stops the run without touching the checkpoints;
a second process on the same run directory is refused, a killed one's lock does not block."""

import csv
import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from cifarlab.errors import UserError
from cifarlab.io import load_checkpoint
from cifarlab.train.runctl import RunLock
from reliability_helpers import REPO, cli, one_line_error
from testdata import write_tree

EPOCHS = 4
TRAIN = ["--preset", "imp2", "--epochs", EPOCHS, "--set", "batch_size=16"]  # augmentation + dropout: all RNGs


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("kill") / "tree", n_train=8, n_test=3)


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory):
    """An uninterrupted run, and when it started training and ended (for choosing kill times)."""
    home = tmp_path_factory.mktemp("home")
    run = tmp_path_factory.mktemp("ref") / "run"
    t0 = time.perf_counter()
    p = cli("train", *TRAIN, "--data", tree, "--out", run, env={"CIFARLAB_HOME": str(home)})
    started = None
    for line in p.stderr:
        if started is None and line.startswith("training "):
            started = time.perf_counter() - t0
    assert p.wait() == 0
    return run, started, time.perf_counter() - t0


def results(run):
    """Everything a run reports except wall-clock times, and its final weights."""
    hist = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(run / "history.csv"))]
    metrics = {k: v for k, v in json.loads((run / "metrics.json").read_text()).items()
               if k not in ("train_seconds", "embed_seconds")}
    return hist, metrics, load_checkpoint(run / "last.pt")["model"], load_checkpoint(run / "best.pt")


def assert_same_run(run, ref):
    (h1, m1, w1, b1), (h2, m2, w2, b2) = results(run), results(ref)
    assert h1 == h2 and m1 == m2 and m1["finished"]
    assert all(torch.equal(w1[k], w2[k]) for k in w2)
    assert b1["epoch"] == b2["epoch"] and all(torch.equal(b1["model"][k], b2["model"][k]) for k in b2["model"])
    assert not list(run.glob(".*.part")) and not (run / ".lock").exists()


def start(tree, run, home):
    """What a user does after a crash: --resume once config.yaml exists, else the original command."""
    args = ["--resume", run] if (run / "config.yaml").exists() else [*TRAIN, "--out", run]
    return cli("train", *args, "--data", tree, env={"CIFARLAB_HOME": str(home)})


def test_kill_9_and_ctrl_c_at_random_moments_then_resume_is_exact(tree, reference, tmp_path):
    ref, started, total = reference
    rng = random.Random(7)
    run, home = tmp_path / "run", tmp_path / "home"
    kills = 0
    for step in ("kill", "ctrl-c", "kill"):
        p = start(tree, run, home)
        if step == "ctrl-c":  # once an epoch has been saved, as a user watching the log would
            for line in p.stderr:
                if line.startswith("epoch "):
                    break
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=120)
            if p.returncode == 0:
                continue  # finished before the signal landed
            lines = err.strip().splitlines()
            assert p.returncode == 130 and "Traceback" not in err, err
            assert lines[-1].startswith("interrupted at epoch ") and f"--resume {run}" in lines[-1]
            continue
        try:
            p.wait(timeout=rng.uniform(0.8 * started, total))
            continue  # it finished first
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            kills += 1
    p = start(tree, run, home)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert kills >= 2
    assert_same_run(run, ref)


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tree, tmp_path, capsys):
    run = tmp_path / "run"
    line = one_line_error(["train", "--preset", "imp1", "--epochs", 3, "--set", "batch_size=16", "--set",
                           "lr_drops=[[1, 1e30]]", "--data", tree, "--out", run, "--quiet"], capsys)
    assert line.startswith("error: epoch 2: ") and "nan" in line and "keep epoch 1" in line
    assert load_checkpoint(run / "last.pt")["state"]["epoch"] == 1
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    assert all(torch.isfinite(w).all() for w in load_checkpoint(run / "last.pt")["model"].values())


HOLD = "import sys, time; from cifarlab.train.runctl import RunLock; RunLock(sys.argv[1]).acquire(); " \
       "print('held', flush=True); time.sleep(600)"


def test_a_second_process_is_refused_and_a_killed_ones_lock_does_not_block(tree, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_line_error(["train", *TRAIN, "--epochs", 1, "--data", tree, "--out", run], capsys)
        assert "is in use by another cifarlab process" in line and f"pid {holder.pid}" in line
        assert [p.name for p in run.iterdir()] == [".lock"]  # the refused process wrote nothing
        with pytest.raises(UserError, match="in use"):
            RunLock(run).acquire()  # also within one process
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".lock").exists()  # the stale file of a kill -9 ...
    RunLock(run).acquire().release()  # ... does not block
    assert main_ok(["train", *TRAIN, "--epochs", 1, "--data", tree, "--out", run, "--quiet"])
    assert not (run / ".lock").exists() and (run / "last.pt").exists()


def main_ok(argv) -> bool:
    from cifarlab.cli import main

    return main([str(a) for a in argv]) == 0


def test_ctrl_c_in_process_keeps_the_checkpoint_and_says_how_to_resume(tree, tmp_path, capsys, monkeypatch):
    """The signal path inside one process: SIGINT at epoch 2, batch 2 (a real signal to ourselves)."""
    import os

    from cifarlab.train import runctl

    real = runctl.check_stop

    def ctrl_c_at_epoch_2(epoch, batch, n):
        if (epoch, batch) == (2, 2):
            os.kill(os.getpid(), signal.SIGINT)
        real(epoch, batch, n)

    monkeypatch.setattr(runctl, "check_stop", ctrl_c_at_epoch_2)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    run = tmp_path / "run"
    line = one_line_error(["train", *TRAIN, "--data", tree, "--out", run, "--quiet"], capsys, code=130)
    assert line == (f"interrupted at epoch 2, batch 2/5: last.pt holds epoch 1; the 2 batches done of epoch 2 "
                    f"are redone on resume, with the same result. Continue with: cifarlab train --resume {run}")
    assert load_checkpoint(run / "last.pt")["state"]["epoch"] == 1 and not (run / ".lock").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_every_output_is_written_atomically():
    """A source scan, for code written later: files are written through cifarlab.io (temp file, fsync,
    rename), never opened for writing in place. train.log is the one append-only exception."""
    import re

    write = re.compile(r"open\([^)]*['\"][wx]b?['\"]|\.write_(text|bytes)\(|(torch\.save|np\.savez?|savefig|\.save)\(")
    bad = []
    for path in sorted((REPO / "src" / "cifarlab").rglob("*.py")):
        if path.name == "io.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            into_object = re.search(r"\.save\((f|buf)\b|savefig\(f\b|savez\(f\b|save\(obj, f\)|npzcache\.save\(", code)
            if write.search(code) and "atomic_write(" not in code and not into_object:
                bad.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)
