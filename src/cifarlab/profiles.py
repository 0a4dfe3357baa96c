"""The study's profiles: which preset trains each of Table 2's five rows, with what overrides, and what it
costs. `reproduce` runs a plan; `reproduce --dry-run` prints it.

- study:  the paper's recipe as published (Adam with manual drops, IMP2 150 epochs, MNETs with
          augmentation through the whole backbone every epoch). Hours on a CPU; for GPU machines.
          `full` is its old name and still works.
- laptop: the same five networks, data protocol and augmentation, with training recipes chosen for
          time-to-accuracy (the `*-laptop` presets, each saying what differs from the paper and why),
          trained two at a time on a 2-core CPU. About 90 minutes on 2 CPU cores.
- quick:  the smoke run: class-balanced subsets and short schedules, MNETs without augmentation.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cifarlab.config import Config, resolve_config
from cifarlab.data.augment import augment_config
from cifarlab.errors import UserError
from cifarlab.rundir import RunDir
from cifarlab.train.speed import THREAD_GAIN

ROWS = ("base", "imp1", "imp2", "mnet1", "mnet2")  # Table 2's rows, in its order
Parts = tuple[float, float, float]  # a run's estimated seconds: before its epochs, its epochs, after them


@dataclass(frozen=True)
class Profile:
    name: str
    presets: dict[str, str]  # row -> preset
    sets: dict[str, list[str]] = field(default_factory=dict)  # row -> `--set` overrides
    robustness_limit: int = 500  # validation images per corruption setting
    note: str = ""  # said in the report


QUICK_SETS = {  # measured about 10 minutes with two lanes on 2 CPU cores (benchmarks/RESULTS.md)
    "base": ["train_subset=10000", "epochs=3", "lr_drops=[[2, 0.1]]"],
    "imp1": ["train_subset=10000", "epochs=6", "lr_drops=[[4, 0.1]]"],
    "imp2": ["train_subset=10000", "epochs=6", "lr_drops=[[4, 0.1]]"],
    # no augmentation, and one shared frozen pass (aug_views=1 without augmentation: the plain images)
    "mnet1": ["train_subset=5000", "epochs=4", "augment=null", "aug_views=1"],
    "mnet2": ["train_subset=5000", "epochs=5", "lr_drops=[[4, 0.1]]", "augment=null", "aug_views=1"],
}

PROFILES = {
    "study": Profile("study", {r: r for r in ROWS}, robustness_limit=2000,
                     note="Study profile: the paper's recipes as published (the presets base, imp1, imp2, mnet1, "
                     "mnet2)."),
    "laptop": Profile("laptop", {r: f"{r}-laptop" for r in ROWS}, robustness_limit=500,
                      note="Laptop profile: the study's networks, data protocol and augmentation, with training "
                      "recipes chosen for time-to-accuracy on 2 CPU cores (each *-laptop preset says what differs "
                      "from the paper and why); the MobileNets see a fixed pool of augmented views embedded once."),
    "quick": Profile("quick", {r: r for r in ROWS}, QUICK_SETS, robustness_limit=200,
                     note="Quick profile: class-balanced training subsets and short schedules (MNETs without "
                     "augmentation), so accuracies sit below what the other profiles reach. A smoke run."),
}
ALIASES = {"full": "study"}


def get_profile(name: str) -> Profile:
    name = ALIASES.get(name, name)
    if name not in PROFILES:
        raise UserError(f"--profile must be one of {', '.join([*PROFILES, *ALIASES])}, got '{name}'")
    return PROFILES[name]


def auto_profile() -> tuple[str, str]:
    """(profile, why) for a run without --profile: the study's recipe where a GPU makes it affordable."""
    import torch

    if torch.cuda.is_available():
        return "study", f"a CUDA GPU is available ({torch.cuda.get_device_name(0)})"
    return "laptop", "no CUDA GPU here, and the study's own recipe takes hours on a CPU"


@dataclass
class Job:
    row: str  # Table 2's row: base, imp1, imp2, mnet1, mnet2
    preset: str
    seed: int
    run_dir: Path
    cfg: Config


def run_folder(out: Path, profile: str) -> Path:
    """OUT/runs/<profile>; the study profile keeps runs made under its old name `full`."""
    name = ALIASES.get(profile, profile)
    legacy = Path(out) / "runs" / "full"
    if name == "study" and legacy.is_dir() and not (Path(out) / "runs" / "study").is_dir():
        return legacy
    return Path(out) / "runs" / name


def plan(out: Path, profile: str, seeds: int, weights: str | None,
         overrides: dict[str, list[str]] | None = None) -> list[Job]:
    """The runs to do. `overrides` adds `--set`-style values per row (e.g. tiny runs in tests)."""
    prof = get_profile(profile)
    if seeds < 1:
        raise UserError(f"--seeds must be positive, got {seeds}")
    folder = run_folder(out, profile)
    jobs = []
    for row in ROWS:
        preset = prof.presets[row]
        for seed in range(seeds):
            sets = prof.sets.get(row, []) + (overrides or {}).get(row, []) + [f"seed={seed}"]
            cfg = resolve_config(preset, sets, weights=weights if row.startswith("mnet") else None)
            jobs.append(Job(row, preset, seed, folder / f"{preset}-seed{seed}", cfg))
    return jobs


# ---------------------------------------------------------------- lanes: runs side by side

def assign(chains: list[list[int]], costs: Sequence[float], n_lanes: int) -> list[list[int]]:
    """Job indices per lane: chains (jobs that must run in order in one lane) longest first, each to the
    lane with the least work so far."""
    lanes: list[list[int]] = [[] for _ in range(n_lanes)]
    load = [0.0] * n_lanes
    for chain in sorted(chains, key=lambda c: -sum(costs[i] for i in c)):
        k = load.index(min(load))
        lanes[k] += chain
        load[k] += sum(costs[i] for i in chain)
    return [lane for lane in lanes if lane]


def view_chains(cfgs: Sequence[Config]) -> list[list[int]]:
    """Runs sharing a MobileNet view cache (same backbone, views, augmentation, seed, subset) form one chain."""
    chains: dict[object, list[int]] = {}
    for i, c in enumerate(cfgs):
        chains.setdefault(view_key(c) or i, []).append(i)
    return list(chains.values())


def view_key(c: Config) -> tuple | None:
    """What decides a MobileNet view cache (train/viewcache.py's key, in config terms); None: no cache."""
    if not (c.model.startswith("mobilenet") and c.aug_views):
        return None
    return c.model, c.alpha, c.weights, c.input_size, c.aug_views, str(c.augment), c.seed, c.train_subset


def wall_seconds(cfgs: Sequence[Config], costs: Sequence[float], n_lanes: int) -> float:
    """The longest lane's work when cfgs run n_lanes at a time (the plan's wall time)."""
    return max(sum(costs[i] for i in lane) for lane in assign(view_chains(cfgs), costs, n_lanes))


# ---------------------------------------------------------------- the cost model

# Seconds per image on the 2-core development machine for a run on one thread (two runs at a time),
# fitted to the measured laptop runs of 2026-12-02 (benchmarks/RESULTS.md, "The study on a laptop"); a run
# on another host is scaled by train.speed's probe.
# A run with more threads is faster by THREAD_GAIN per doubling (benchmarks/lanes_speed.py: 2 threads
# train IMP 1.5x, BASE 1.6x and run MobileNet 1.5x as fast as 1 thread while another run has the
# other core), so two one-thread runs at once give ~1.35x the throughput of one two-thread run.
SEC = {
    "base_train": 1 / 420, "imp_train": 1 / 560,  # per training image (IMP with or without augmentation)
    "base_eval": 1 / 1200, "imp_eval": 1 / 1600,  # per validation image, once per epoch
    # frozen MobileNet v1 at 128 px, per image (augmented views built once), in batches of 16 with freed memory
    # kept: 110,000 images in 1223 s on a host probed at 0.41x (2026-12-02, session 6); at batch 64 with the
    # default allocator it was 1/126 (the first laptop run; `mobilenet_batch64`)
    "mobilenet_embed": 1 / 215,
    "mobilenet_batch64": 1 / 126,  # the same at the training batch of 64 (the study's on-the-fly augmentation)
    "mobilenet_full": 1 / 115,  # a whole MobileNet forward at 128 px (evaluation and robustness)
    "mnet1_tail": 1 / 2700,  # per cached image per epoch: the frozen last unit + head
    "mnet2_tail": 1 / 1090,  # the trainable last unit + head, forward and backward
}
EVAL_EXTRA = {"base": 25.0, "imp": 25.0, "mobilenet": 30.0}  # photos, figures, loading, after training
ROBUSTNESS_SETTINGS = 36  # corruption x severity settings + sharpening, on `robustness_limit` images


def estimate_parts(cfg: Config, n_val: int = 10_000, robustness_limit: int = 0, views_cached: bool = False,
                   speed: dict[str, float] | None = None, epochs_done: int = 0) -> Parts:
    """One run's seconds from the fitted per-image costs, in its three phases: before its first epoch
    (a MobileNet embedding its views), its epochs, after them (evaluation, robustness, figures).
    `views_cached`: an earlier run of the plan embeds the same MobileNet views (MNET1 for MNET2).
    `speed`: this machine against the cost model's (train.speed.machine_speed); None = the same.
    `epochs_done`: a resumed run's finished epochs (its views, if any, are on disk already)."""
    speed = speed or {}
    sec = {k: v / speed.get("mobilenet" if k.startswith("mobilenet") else "train", 1.0) for k, v in SEC.items()}
    extra = {k: v / speed.get("mobilenet" if k == "mobilenet" else "train", 1.0) for k, v in EVAL_EXTRA.items()}
    n = cfg.train_subset or 50_000
    epochs = max(cfg.epochs - epochs_done, 0)
    views_cached = views_cached or (epochs_done > 0 and cfg.aug_views > 0)  # a view cache is on disk
    if cfg.model.startswith("mobilenet"):
        kind = "mnet1" if cfg.trainable == "head" else "mnet2"
        after = (n_val + robustness_limit * ROBUSTNESS_SETTINGS) * sec["mobilenet_full"] + extra["mobilenet"]
        if augment_config(cfg).enabled and not cfg.aug_views:  # the study's way: the whole backbone, every epoch
            return 0.0, epochs * (n + n_val) * sec["mobilenet_batch64"], after
        embed = 0 if views_cached else (max(cfg.aug_views, 1) * n + n_val) * sec["mobilenet_embed"]
        return embed, epochs * (n + n_val) * sec[f"{kind}_tail"], after
    model = "base" if cfg.model == "base" else "imp"
    train = epochs * (n * sec[f"{model}_train"] + n_val * sec[f"{model}_eval"])
    after = (n_val + robustness_limit * ROBUSTNESS_SETTINGS) * sec[f"{model}_eval"] + extra[model]
    return 0.0, train, after


def plan_parts(jobs: list[Job], robustness_limit: int = 0, threads: int = 1, speed: dict[str, float] | None = None,
               resumed: bool = False) -> list[Parts]:
    """`estimate_parts` per job, each run on `threads` threads on a machine of `speed` (None: the cost
    model's); MobileNet runs that share a view cache pay for embedding it once. `resumed`: the time still
    to come, counting the epochs each run directory already holds."""
    seen, out = set(), []
    gain = THREAD_GAIN ** math.log2(max(threads, 1))
    for j in jobs:
        key = view_key(j.cfg)
        shared = key is not None and key in seen
        seen.add(key)
        parts = estimate_parts(j.cfg, robustness_limit=robustness_limit, views_cached=shared, speed=speed,
                               epochs_done=RunDir(j.run_dir).epochs_done() if resumed else 0)
        out.append(tuple(x / gain for x in parts))
    return out


def estimate_plan(jobs: list[Job], robustness_limit: int = 0, threads: int = 1,
                  speed: dict[str, float] | None = None, resumed: bool = False) -> list[float]:
    """Seconds per job (`plan_parts`, summed)."""
    return [sum(p) for p in plan_parts(jobs, robustness_limit, threads, speed, resumed)]


def default_jobs() -> int:
    """Trainings at once: two on a CPU with 2+ cores (measured on 2 cores: two one-thread runs give 1.24-1.35x
    the throughput of one two-thread run), one on a GPU."""
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(2, (os.cpu_count() or 1)))


def plan_yaml(jobs: list[Job], seconds: list[float], profile: str, n_lanes: int,
              speed: dict[str, float] | None = None) -> str:
    """`reproduce --dry-run`: one YAML document per run (its future config.yaml + estimated_minutes), then
    the total: the sum of the runs' minutes and the wall time with n_lanes trainings at once, and the machine
    speed the estimates were scaled by."""
    import yaml

    docs = [f"# {j.run_dir}\n" + yaml.safe_dump({**j.cfg.to_dict(), "estimated_minutes": round(s / 60, 1)},
                                                   sort_keys=False) for j, s in zip(jobs, seconds)]
    wall = wall_seconds([j.cfg for j in jobs], seconds, n_lanes)
    total = {"profile": ALIASES.get(profile, profile), "runs": len(jobs), "jobs": n_lanes,
             "estimated_minutes": round(wall / 60, 1), "estimated_run_minutes": round(sum(seconds) / 60, 1)}
    if speed:
        total["machine_speed"] = {k: round(v, 2) for k, v in speed.items()}
    return "---\n".join(docs + [yaml.safe_dump(total, sort_keys=False)])
