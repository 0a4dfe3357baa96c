"""Against Keras: the study's IMP model trained with Keras/TensorFlow and with cifarlab, side by side.

Same data (one class-balanced training subset and the full 10k validation split, written once to a
temporary .npz that both read), same preprocessing (x / 255, no augmentation), same batch size, lr
and L2 (from the preset, imp1 by default), same epochs, same thread count. The two are interleaved
epoch by epoch (train A, train B, eval A, eval B; the order flips every epoch) so that load from
elsewhere on a shared machine hits both alike: compare the ratios, not the absolute img/s.

TensorFlow is never a cifarlab dependency: the script creates (or reuses) a throw-away venv, by
default $CIFARLAB_HOME/keras-venv, pip-installs tensorflow-cpu there (tensorflow if that fails), and
runs the Keras side (benchmarks/keras_imp.py) in a child process with that venv's Python.

    python benchmarks/keras_compare.py [--train 10000] [--epochs 2] [--threads 2] [--data PATH]
                                       [--preset imp1] [--set KEY=VALUE] [--venv DIR] [--out FILE]

Train img/s are reported for epoch 1 (includes warm-up: graph tracing, oneDNN primitive caches) and
for the steady state (mean over epochs 2..N); eval img/s is steady-state prediction on the validation
split. cifarlab's side is its own epoch loop (train.loop.train_epoch / evaluate_model, what
`cifarlab train` runs per epoch, minus checkpoint writes); Keras's side is model.fit for one epoch
and model.predict. --out FILE writes the table as Markdown, or as JSON if FILE ends in .json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import cifarlab

from cifarlab.config import resolve_config
from cifarlab.data import class_balanced_subset, load_cifar10
from cifarlab.data.cifar import default_cache_dir
from cifarlab.errors import UserError
from cifarlab.data.augment import augment_config
from cifarlab.models import build_model
from cifarlab.models.predict import evaluate_model
from cifarlab.train.loop import train_epoch
from cifarlab.train.progress import Progress

from _meta import loadavg, run_meta

CHILD = Path(__file__).with_name("keras_imp.py")


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_tf_venv(venv: Path, spec: str | None) -> Path:
    """The venv's Python, with TensorFlow importable; created and installed (niced) if needed."""
    py = venv_python(venv)
    check = [str(py), "-c", "import tensorflow"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    print(f"creating TensorFlow venv {venv} (one-off, ~1.6 GB)", file=sys.stderr, flush=True)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    nice = ["nice", "-n", "10"] if os.name != "nt" else []
    for pkg in [spec] if spec else ["tensorflow-cpu", "tensorflow"]:
        r = subprocess.run(nice + [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", pkg])
        if r.returncode == 0 and subprocess.run(check, capture_output=True).returncode == 0:
            return py
    sys.exit(f"could not install TensorFlow into {venv} (tried {spec or 'tensorflow-cpu, tensorflow'})")


class KerasChild:
    """The Keras side in its own process; one command per call, one JSON reply."""

    def __init__(self, py: Path, npz: Path, cfg, threads: int, log_path: Path):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS=str(threads),
                   TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads),
                   CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow")
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [str(py), str(CHILD), "--data", str(npz), "--batch", str(cfg.batch_size),
             "--eval-batch", str(cfg.eval_batch_size), "--lr", str(cfg.lr), "--l2", str(cfg.l2),
             "--threads", str(threads), "--seed", str(cfg.seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                out = json.loads(line[3:])
                if "error" in out:
                    raise RuntimeError(out["error"])
                return out
        self.log.flush()
        sys.exit(f"Keras child exited (rc {self.proc.wait()}); its log: {self.log.name}")

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


class CifarlabSide:
    def __init__(self, cfg, x, y, vx, vy):
        self.cfg, self.x, self.y, self.vx, self.vy = cfg, x, y, vx, vy
        self.model = build_model(cfg, torch.device("cpu"))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.params = sum(p.numel() for p in self.model.parameters())

    def ask(self, cmd: str) -> dict:
        op = cmd.split()
        if op[0] == "train":
            epoch, lr = int(op[1]), float(op[2])
            for g in self.opt.param_groups:
                g["lr"] = lr
            t0 = time.perf_counter()
            loss, acc = train_epoch(self.model, self.opt, self.x, self.y, self.cfg, epoch,
                                    Progress(math.ceil(len(self.x) / self.cfg.batch_size), quiet=True))
            return {"seconds": time.perf_counter() - t0, "images": len(self.x), "loss": loss, "acc": acc}
        t0 = time.perf_counter()
        _, acc = evaluate_model(self.model, self.vx, self.vy, self.cfg.eval_batch_size, self.cfg.channels_last)
        return {"seconds": time.perf_counter() - t0, "images": len(self.vx), "val_acc": acc}


def summarize(name: str, version: str, epochs: list[dict], evals: list[dict]) -> dict:
    def rate(rows):
        return sum(r["images"] for r in rows) / sum(r["seconds"] for r in rows)
    steady = epochs[1:] or epochs
    return {"framework": name, "version": version,
            "train_img_s_epoch1": rate(epochs[:1]), "train_img_s": rate(steady),
            "eval_img_s": rate(evals[1:] or evals),
            "epoch_seconds": [round(r["seconds"], 2) for r in epochs],
            "train_acc": epochs[-1]["acc"], "val_acc": evals[-1]["val_acc"],
            "val_acc_per_epoch": [round(r["val_acc"], 4) for r in evals]}


def markdown(meta: dict, rows: list[dict]) -> str:
    k = rows[0]
    lines = [meta["line"], "",
             "| framework | version | train img/s (epoch 1) | train img/s (steady) | eval img/s | "
             "val acc (final) | train img/s vs Keras | eval img/s vs Keras |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['framework']} | {r['version']} | {r['train_img_s_epoch1']:.0f} | {r['train_img_s']:.0f} | "
                     f"{r['eval_img_s']:.0f} | {r['val_acc']:.4f} | {r['train_img_s'] / k['train_img_s']:.2f} | "
                     f"{r['eval_img_s'] / k['eval_img_s']:.2f} |")
    lines += ["", "val acc per epoch: " + "; ".join(f"{r['framework']} {r['val_acc_per_epoch']}" for r in rows)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=10000, help="class-balanced training images (default 10000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both frameworks")
    ap.add_argument("--preset", default="imp1", help="batch size, lr, L2, memory format from this preset")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides for the cifarlab side (batch_size, lr and l2 also go to Keras)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="CIFAR-10 source (as for `cifarlab train --data`)")
    ap.add_argument("--venv", type=Path, default=None, help="TensorFlow venv (default $CIFARLAB_HOME/keras-venv)")
    ap.add_argument("--tf", default=None, metavar="SPEC", help="pip spec to install, e.g. tensorflow-cpu==2.21.0")
    ap.add_argument("--out", type=Path, default=None, help="write the table (.json: JSON, else Markdown)")
    args = ap.parse_args()

    py = ensure_tf_venv(args.venv or default_cache_dir() / "keras-venv", args.tf)
    torch.set_num_threads(args.threads)
    cfg = resolve_config(args.preset, args.set, epochs=args.epochs, seed=args.seed)
    if cfg.model != "imp" or augment_config(cfg).enabled:
        sys.exit("this benchmark compares the IMP model without augmentation (use --preset imp1)")

    try:
        data = load_cifar10(args.data, progress=False)
    except UserError as e:
        sys.exit(f"error: {e}")
    keep = class_balanced_subset(data.train_y, args.train, seed=cfg.seed)
    x, y = data.train_x[keep].contiguous(), data.train_y[keep].contiguous()
    with tempfile.TemporaryDirectory(prefix="keras_compare_") as tmp:
        npz = Path(tmp) / "subset.npz"
        np.savez(npz, train_x=x.numpy(), train_y=y.numpy(), val_x=data.val_x.numpy(), val_y=data.val_y.numpy())
        keras_side = KerasChild(py, npz, cfg, args.threads, Path(tmp) / "keras.log")
        try:
            torch_side = CifarlabSide(cfg, x, y, data.val_x, data.val_y)
            info = keras_side.info
            meta = {"line": (
                f"IMP ({args.preset}: batch {cfg.batch_size}, Adam lr {cfg.lr:g}, L2 {cfg.l2:g} on conv kernels, "
                f"no augmentation), {len(x)} class-balanced training images, {len(data.val_x)} validation, "
                f"{args.epochs} epochs, {args.threads} threads each, {platform.machine()} "
                f"{os.cpu_count()} CPUs; params: Keras {info['params']:,}, cifarlab {torch_side.params:,}; "
                f"cifarlab channels_last={cfg.channels_last}, Keras NHWC, jit_compile={info['jit_compile']}"),
                "data": data.source}
            print(meta["line"], file=sys.stderr, flush=True)
            load_start = loadavg()
            load0 = os.getloadavg()[0]
            if load0 > (os.cpu_count() or 1):
                print(f"warning: machine busy (load average {load0:.1f} on {os.cpu_count()} CPUs); multi-threaded "
                      "img/s are unreliable, torch's OpenMP pool suffering more than TF's (try --threads 1)",
                      file=sys.stderr, flush=True)
            sides = {"keras": keras_side, "cifarlab": torch_side}
            log = {n: {"train": [], "eval": []} for n in sides}
            for epoch in range(1, args.epochs + 1):
                order = ["keras", "cifarlab"] if epoch % 2 else ["cifarlab", "keras"]
                lr = cfg.lr_at(epoch)
                for what in ("train", "eval"):
                    for n in order:
                        r = sides[n].ask(f"train {epoch} {lr!r}" if what == "train" else "eval")
                        log[n][what].append(r)
                        print(f"epoch {epoch} {n:8s} {what}: {r['images'] / r['seconds']:.0f} img/s"
                              + (f", val acc {r['val_acc']:.4f}" if what == "eval" else f", train acc {r['acc']:.4f}"),
                              file=sys.stderr, flush=True)
        finally:
            keras_side.close()

    meta["line"] += f"; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    rows = [summarize("Keras (TensorFlow)", f"keras {info['keras']} / tf {info['tensorflow']}", **_split(log["keras"])),
            summarize("cifarlab (PyTorch)", f"cifarlab {cifarlab.__version__} / torch {torch.__version__}",
                      **_split(log["cifarlab"]))]
    table = markdown(meta, rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            args.out.write_text(json.dumps({**meta, **run_meta(load_start), "rows": rows}, indent=2) + "\n")
        else:
            args.out.write_text(table + "\n")


def _split(side_log: dict) -> dict:
    return {"epochs": side_log["train"], "evals": side_log["eval"]}


if __name__ == "__main__":
    main()
