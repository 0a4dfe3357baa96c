"""Sweep scaling: one grid of short runs trained by 1, 2 and 4 `cifarlab sweep --worker` processes sharing a
journal file; wall time (first worker started to last worker done, including each worker's start-up and
data loading) and the speed-up over one worker.

Each worker gets cores/N threads (at least one), as lanes do. On this 2-core machine the speed-up is
bounded by the cores (and a run does not scale to its second thread: benchmarks/lanes_speed.py), so 4
workers only oversubscribe; on a cluster each worker is its own machine or GPU and the wall time falls
with the worker count until the longest run (or the study's size) sets it. Run it on a quiet machine.

    python benchmarks/sweep_scaling.py --data PATH [--runs 8] [--subset 2000] [--epochs 2] [--workers 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _meta import loadavg, run_meta


def sweep_once(data: str, workers: int, runs: int, subset: int, epochs: int, root: Path) -> dict:
    """Wall time of one fresh sweep of `runs` seeds with `workers` worker processes."""
    out = root / f"w{workers}"
    spec = root / f"grid{workers}.yaml"
    spec.write_text(f"preset: fast\nsubset: {subset}\nepochs: {epochs}\ngrid:\n  seed: {list(range(runs))}\n")
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "cifarlab", "sweep", str(spec), "--out", str(out), "--data", data, "--worker",
           "--quiet"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    for p, err in zip(procs, errors):
        if p.returncode:
            sys.exit(f"a worker failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")
    metrics = [json.loads((d / "metrics.json").read_text()) for d in sorted((out / "runs").iterdir())]
    assert len(metrics) == runs and all(m["finished"] for m in metrics)
    return {"workers": workers, "threads_per_worker": threads, "wall_seconds": round(wall, 1),
            "train_seconds_sum": round(sum(m["train_seconds"] for m in metrics), 1),
            "val_accuracy": [m["val_accuracy"] for m in metrics]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("CIFARLAB_DATA"), help="CIFAR-10 (default: $CIFARLAB_DATA)")
    ap.add_argument("--runs", type=int, default=8, help="grid cells (seeds)")
    ap.add_argument("--subset", type=int, default=2000, help="training images per run")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--out", default="benchmarks/results/sweep_scaling.json")
    args = ap.parse_args()
    if not args.data:
        sys.exit("--data PATH (or $CIFARLAB_DATA) is required")
    start = loadavg()
    rows = []
    print(f"{args.runs} runs of fast ({args.subset} images, {args.epochs} epochs), {os.cpu_count()} cores, "
          f"load {start}\n\n| workers | threads each | wall s | speed-up |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="sweep-scaling-") as tmp:
        for n in args.workers:
            row = sweep_once(args.data, n, args.runs, args.subset, args.epochs, Path(tmp))
            row["speedup"] = round(rows[0]["wall_seconds"] / row["wall_seconds"], 2) if rows else 1.0
            rows.append(row)
            print(f"| {n} | {row['threads_per_worker']} | {row['wall_seconds']} | {row['speedup']:.2f}x |", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": args.runs, "subset": args.subset, "epochs": args.epochs, "preset": "fast",
                               "storage": "journal file", "rows": rows, **run_meta(start)}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
