"""Two runs at a time: is one training process on all cores faster than one process per core?

For each workload (IMP training steps with the study's augmentation, BASE training steps, the frozen
MobileNet v1 forward at 128 px) this times (a) one process with all threads, alone, and (b) N processes
with threads/N each, started together. It prints images/s per process and in total, and writes JSON.
Run it on a quiet machine (nothing else training): the point is how the cores are shared.

    python benchmarks/lanes_speed.py [--seconds 60] [--lanes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path

WORKLOADS = ("imp", "base", "mobilenet_embed")


def run(workload: str, procs: int, threads: int, seconds: float) -> list[float]:
    """img/s of each of `procs` processes of `threads` threads measuring at once (reproduce's probe does the same)."""
    from cifarlab.train.speed import side_by_side

    return side_by_side({"mobilenet_embed": "mobilenet"}.get(workload, workload), seconds, threads, procs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    ap.add_argument("--out", default="benchmarks/results/lanes_speed.json")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    load = os.getloadavg()
    print(f"{cores} cores, load before {load[0]:.2f}; {args.seconds:.0f} s per measurement\n")
    print("| workload | 1 process x {c} threads, img/s | {n} processes x {t} thread(s), img/s each | total | speed-up |"
          .format(c=cores, n=args.lanes, t=max(1, cores // args.lanes)))
    print("|---|---|---|---|---|")
    rows = []
    for w in args.workloads:
        alone = run(w, 1, cores, args.seconds)[0]
        lanes = run(w, args.lanes, max(1, cores // args.lanes), args.seconds)
        rows.append({"workload": w, "one_process": alone, "lanes": lanes, "speedup": sum(lanes) / alone})
        print(f"| {w} | {alone:.0f} | {' / '.join(f'{v:.0f}' for v in lanes)} | {sum(lanes):.0f} | "
              f"{sum(lanes) / alone:.2f}x |", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cores": cores, "loadavg_before": load, "loadavg_after": os.getloadavg(),
                                          "machine": platform.processor() or platform.machine(), "commit": commit,
                                          "seconds": args.seconds, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
