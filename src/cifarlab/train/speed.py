"""How fast this machine runs the study's two kinds of work, against the machine the cost model was
fitted on: seconds of IMP training steps (with the study's augmentation) and of frozen MobileNet
v1 forwards at 128 px (batch 64), run as reproduce will train, one process per lane side by side, as
`benchmarks/lanes_speed.py` measured the reference. Side by side, not alone: lanes share the memory
bus, and how much that costs differs between machines (2026-12-02, a slower host of the same kind: IMP
alone at 0.73x the reference, two at once 0.61x each, which is what its laptop run's epochs took).
`reproduce` scales its ETA by these ratios. The reference was timed for 40 s after 3 warm-up steps, the
probe for 2 s after 2: a few percent of noise, well inside the ETA's ±20 %. The probe's processes start
fresh (torch's import and the warm-up are most of its ~12 s) with the default allocator and batch 64,
as the reference was measured: a ratio of like to like, not a timing of the runs' own passes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from typing import IO, Callable

import torch

from cifarlab.config import resolve_config
from cifarlab.data.augment import augment_batch, augment_config
from cifarlab.errors import UserError
from cifarlab.models import build_model

# kind of work -> (its workload, img/s of each of two one-thread processes side by side on the cost
# model's machine: benchmarks/RESULTS.md, "Two runs at a time", commit 505463c, quiet: 584/620, 133/127)
REFERENCE = {"train": ("imp", 602.0), "mobilenet": ("mobilenet", 130.0)}
ENV = "CIFARLAB_MACHINE_SPEED"  # a number: use it for every ratio and skip the probe (tests, known machines)
THREAD_GAIN = 1.5  # speed-up of one run per doubling of its threads (lanes_speed.py: 1.5-1.6x from 1 to 2)


def workload(name: str) -> tuple[Callable[[], None], int]:
    """One step of `name` on synthetic images, and its images per step: 'imp' or 'base' (a training step
    with the preset's augmentation), 'mobilenet' (the frozen backbone's forward, batch 64)."""
    g = torch.Generator().manual_seed(0)
    if name == "mobilenet":
        model = build_model(resolve_config("mnet1", ["weights=null"]), torch.device("cpu"))
        x = torch.rand(64, 3, 32, 32, generator=g)
        return (lambda: model.embed(x)), 64
    cfg = resolve_config("imp2" if name == "imp" else name)
    model = build_model(cfg, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.rand(cfg.batch_size, 3, 32, 32, generator=g), torch.randint(0, 10, (cfg.batch_size,), generator=g)
    aug = augment_config(cfg)

    def step() -> None:
        xb = augment_batch(x, aug, g) if aug.enabled else x
        if cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(model(xb), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step, cfg.batch_size


def images_per_second(name: str, seconds: float, threads: int = 2, warmup: int = 2,
                      ready: Callable[[], None] | None = None) -> float:
    """Workload `name`'s img/s on `threads` threads, timed for about `seconds` after `warmup` steps (and,
    given `ready`, after it returns: processes measuring side by side start together)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step, batch = workload(name)
        for _ in range(warmup):
            step()
        if ready is not None:
            ready()
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < seconds:
            step()
            n += batch
        return n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def fixed_speed() -> float | None:
    """The speed `CIFARLAB_MACHINE_SPEED` gives (None when unset); a one-line error if it is no positive number."""
    fixed = os.environ.get(ENV)
    if fixed is None:
        return None
    try:
        value = float(fixed)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{ENV} must be a positive number, got '{fixed}'")
    return value


def machine_speed(lanes: int = 2, seconds: float = 2.0) -> dict[str, float]:
    """This machine's speed over the reference's per kind of work (0.5 = takes twice as long) for `lanes`
    runs at a time on cores/lanes threads each, probed for about `seconds` per kind;
    `CIFARLAB_MACHINE_SPEED`, where set, instead of probing."""
    fixed = fixed_speed()
    if fixed is not None:
        return dict.fromkeys(REFERENCE, fixed)
    threads = max(1, (os.cpu_count() or 1) // lanes)
    gain = THREAD_GAIN ** math.log2(threads)  # the reference lanes had one thread each
    return {kind: sum(side_by_side(name, seconds, threads, lanes)) / lanes / (ref * gain)
            for kind, (name, ref) in REFERENCE.items()}


def side_by_side(name: str, seconds: float, threads: int, lanes: int) -> list[float]:
    """Workload `name`'s img/s in each of `lanes` fresh processes of `threads` threads measuring at once:
    each says "ready" once warmed up, and all are told "go" together (a slow torch import cannot make
    them measure one after another). Fresh processes for one lane too: the cost model's machine was
    measured that way, with the default allocator."""
    cmd = [sys.executable, "-m", "cifarlab.train.speed", json.dumps([name, seconds, threads])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # stderr to files: a chatty probe must not block on a full pipe while the others are being read
    errs = [tempfile.TemporaryFile(mode="w+") for _ in range(lanes)]
    procs = [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
             for err in errs]
    try:
        for p in procs:
            while p.stdout.readline() not in ("ready\n", ""):  # "" from a process that died: its error comes below
                pass
        for p in procs:
            try:
                p.stdin.write("go\n")
                p.stdin.flush()
            except OSError:  # it died before "go": reported below
                pass
        return [_rate(p, err) for p, err in zip(procs, errs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for err in errs:
            err.close()


def _rate(p: subprocess.Popen, err_file: IO[str]) -> float:
    """The img/s a probe process printed last; a one-line error if it failed or printed something else."""
    out, _ = p.communicate()
    err_file.seek(0)
    err = err_file.read()
    lines = out.strip().splitlines()
    try:
        if p.returncode == 0 and lines:
            return float(lines[-1])
    except ValueError:
        pass
    why = (err.strip().splitlines() or lines or [f"exit code {p.returncode}"])[-1]
    raise UserError(f"the machine-speed probe failed: {why}")


def _probe_main(spec: str) -> None:
    """One process of side_by_side: warm up, say ready, wait for go, print its img/s."""
    name, seconds, threads = json.loads(spec)

    def ready() -> None:
        print("ready", flush=True)
        sys.stdin.readline()

    print(images_per_second(name, seconds, threads, ready=ready))


if __name__ == "__main__":
    _probe_main(sys.argv[1])
