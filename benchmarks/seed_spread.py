"""Seed-to-seed spread of one training setting: the yardstick for tests/test_distributed.py's tolerance.

Trains `fast` with K seeds, one process each, on the distributed test's setting (a real class-balanced
subset: the first 100 training and 50 validation images of each class, 4 epochs, batch 50), and
reports the final validation accuracy's mean, std, min and max. Accuracies, not timings: the machine's
load does not matter. Finished runs in --work are reused.

    python benchmarks/seed_spread.py --data PATH [--seeds 10] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _meta import loadavg, run_meta

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # testdata.write_real_tree: the test's own subset

EPOCHS, BATCH, N_TRAIN, N_VAL = 4, 50, 100, 50  # as in tests/test_distributed.py


def main() -> None:
    from cifarlab.data import load_cifar10
    from testdata import write_real_tree

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("CIFARLAB_DATA"), help="CIFAR-10 (default: $CIFARLAB_DATA)")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--work", default="seed-spread", help="folder for the subset and the runs (reused)")
    ap.add_argument("--out", default="benchmarks/results/seed_spread_distributed.json")
    args = ap.parse_args()
    start, work = loadavg(), Path(args.work)
    tree = work / "tree"
    if not tree.is_dir():
        write_real_tree(load_cifar10(args.data, progress=False), tree, N_TRAIN, N_VAL)
    acc = []
    for seed in range(args.seeds):
        run = work / f"seed{seed}"
        metrics = run / "metrics.json"
        if not (metrics.is_file() and json.loads(metrics.read_text())["finished"]):
            cmd = ["train", "--resume", str(run)] if (run / "config.yaml").is_file() else [
                "train", "--preset", "fast", "--out", str(run), "--epochs", str(EPOCHS), "--seed", str(seed),
                "--set", f"batch_size={BATCH}", "--set", "eval_batch_size=250"]
            subprocess.run([sys.executable, "-m", "cifarlab", *cmd, "--data", str(tree), "--quiet"], check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        acc.append(json.loads((run / "metrics.json").read_text())["val_accuracy"])
        print(f"seed {seed}: {acc[-1]:.4f}", flush=True)
    result = {"setting": {"preset": "fast", "epochs": EPOCHS, "batch_size": BATCH, "train_images": 10 * N_TRAIN,
                          "val_images": 10 * N_VAL}, "val_accuracy": acc, "mean": round(statistics.mean(acc), 4),
              "std": round(statistics.stdev(acc), 4), "min": min(acc), "max": max(acc), **run_meta(start)}
    print(f"mean {result['mean']:.4f}, std {result['std']:.4f} ({result['min']:.3f}-{result['max']:.3f}); "
          f"4·√2·std = {4 * 2 ** 0.5 * result['std']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
