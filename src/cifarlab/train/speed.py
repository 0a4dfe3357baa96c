"""How fast this machine runs the study's two kinds of work, against the machine the cost model was
fitted on: a few seconds of IMP training steps (with the study's augmentation) and of frozen MobileNet
v1 forwards at 128 px (batch 64), run as reproduce will train, one process per lane side by side, as
`benchmarks/lanes_speed.py` measured the reference. Side by side, not alone: lanes share the memory
bus, and how much that costs differs between machines (2026-12-02, a slower host of the same kind: IMP
alone at 0.73x the reference, two at once 0.61x each, which is what its laptop run's epochs took).
`reproduce` scales its ETA by these ratios. The reference was timed for 40 s after 3 warm-up steps, the
probe for 2 s after 2: a few percent of noise, well inside the ETA's ±20 %.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from typing import Callable

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
                      start_at: float | None = None) -> float:
    """Workload `name`'s img/s on `threads` threads, timed for about `seconds` after `warmup` steps (and,
    given `start_at`, a time.time(), not before then: processes measuring side by side start together)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        step, batch = workload(name)
        for _ in range(warmup):
            step()
        if start_at is not None:
            time.sleep(max(0.0, start_at - time.time()))
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
    """Workload `name`'s img/s in each of `lanes` processes of `threads` threads measuring at once (in this
    process when there is one lane)."""
    if lanes == 1:
        return [images_per_second(name, seconds, threads)]
    start = time.time() + 8.0  # after every process has imported torch and warmed up
    cmd = [sys.executable, "-m", "cifarlab.train.speed", json.dumps([name, seconds, threads, start])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(lanes)]
    rates = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise UserError(f"the machine-speed probe failed: {(err.strip().splitlines() or ['no message'])[-1]}")
        rates.append(float(out))
    return rates


def _probe_main(spec: str) -> None:
    """One lane of side_by_side: print its img/s."""
    name, seconds, threads, start = json.loads(spec)
    print(images_per_second(name, seconds, threads, start_at=start))


if __name__ == "__main__":
    _probe_main(sys.argv[1])
