"""The frozen MobileNet pass (what the view cache runs, 128 px, one thread as in a laptop lane) with glibc's
default allocator settings and with `memory.keep_freed_memory()`, at several chunk sizes: img/s, minor
page faults per image and the share of the time spent in the kernel. Each setting runs in its own process
(the allocator setting is process-wide).

    python benchmarks/embed_alloc.py [--images 1024] [--chunks 16 32 64] [--threads 1]

Weights are random (speed does not depend on them). Prints Markdown; record it in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from _meta import git_commit, loadavg


def measure(images: int, chunk: int, threads: int, keep: bool) -> dict[str, float]:
    import torch

    from cifarlab.config import resolve_config
    from cifarlab.memory import keep_freed_memory
    from cifarlab.models import build_model

    torch.set_num_threads(threads)
    kept = keep_freed_memory() if keep else False
    model = build_model(resolve_config("mnet1", ["weights=null"]), torch.device("cpu")).eval()
    x = torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.embed_shared(x[:chunk])  # warm-up
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i in range(0, images, chunk):
            model.embed_shared(x[i:i + chunk])
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"img_s": images / wall, "faults_per_img": (r1.ru_minflt - r0.ru_minflt) / images,
            "kernel_share": (r1.ru_stime - r0.ru_stime) / cpu, "kept": kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, JSON out
    args = ap.parse_args()
    if args.one:
        chunk, keep = json.loads(args.one)
        print(json.dumps(measure(args.images, chunk, args.threads, keep)))
        return
    print(f"commit {git_commit()}, load at start {loadavg()}\n\n"
          f"{args.images} images, {args.threads} thread(s), frozen MobileNet v1 at 128 px\n")
    print("| chunk | allocator | img/s | page faults / image | kernel time |\n|---|---|---|---|---|")
    for chunk in args.chunks:
        for keep in (False, True):
            out = subprocess.run([sys.executable, __file__, "--images", str(args.images), "--threads",
                                  str(args.threads), "--one", json.dumps([chunk, keep])], capture_output=True,
                                 text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            r = json.loads(out.stdout)
            name = "keep_freed_memory" if r["kept"] else ("default" if not keep else "default (mallopt refused)")
            print(f"| {chunk} | {name} | {r['img_s']:.0f} | {r['faults_per_img']:.0f} | {r['kernel_share']:.0%} |",
                  flush=True)
    print(f"\nload at end {loadavg()}")


if __name__ == "__main__":
    main()
