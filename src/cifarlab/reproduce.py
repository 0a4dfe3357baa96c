"""The whole study from one call: train BASE, IMP1, IMP2, MNET1 and MNET2, evaluate each on the
validation set and on a real-photo test set (unfiltered and blurred), write Table 2 and the report.

Runs live in OUT/runs/<profile>/<preset>-seed<k>; a finished run is reused, an interrupted one
resumes, so the command can be stopped and started again at any point.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cifarlab.config import Config, load_config, resolve_config
from cifarlab.errors import UserError
from cifarlab.train.loop import augment_config
from cifarlab.train.progress import fmt_time

PRESETS = ("base", "imp1", "imp2", "mnet1", "mnet2")

# The quick profile: class-balanced training subsets and short schedules that finish in well under
# 30 minutes on a 2-vCPU machine. MNETs train without augmentation here, so the frozen backbone runs
# once per image instead of once per image per epoch (the study trained them with augmentation).
QUICK = {
    "base": ["train_subset=10000", "epochs=4", "lr_drops=[[3, 0.1]]"],
    "imp1": ["train_subset=15000", "epochs=10", "lr_drops=[[7, 0.1]]"],
    "imp2": ["train_subset=15000", "epochs=10", "lr_drops=[[7, 0.1]]"],
    "mnet1": ["train_subset=10000", "epochs=5", "augment=null"],
    "mnet2": ["train_subset=10000", "epochs=8", "lr_drops=[[6, 0.1]]", "augment=null"],
}
QUICK_NOTE = ("Quick profile: class-balanced training subsets and short schedules (MNETs without "
              "augmentation), so accuracies sit below what the full presets reach. Run with --profile full "
              "for the study's settings.")

ROBUSTNESS_LIMIT = {"quick": 500, "full": 2000}  # validation images per corruption setting

# Training images/s on the 2-vCPU dev machine (benchmarks/RESULTS.md); only used for the overall ETA.
# The frozen MobileNet figure is what full-data embedding runs achieved (60k images in 370-400 s).
_SPEED = {"base": 630.0, "imp": 635.0, "frozen_mobilenet": 150.0}


@dataclass
class Job:
    preset: str
    seed: int
    run_dir: Path
    cfg: Config


def plan(out: Path, profile: str, seeds: int, weights: str | None,
         overrides: dict[str, list[str]] | None = None) -> list[Job]:
    """The runs to do. `overrides` adds `--set`-style values per preset (e.g. tiny runs in tests)."""
    if profile not in ("quick", "full"):
        raise UserError(f"--profile must be quick or full, got '{profile}'")
    if seeds < 1:
        raise UserError(f"--seeds must be positive, got {seeds}")
    jobs = []
    for preset in PRESETS:
        for seed in range(seeds):
            sets = (QUICK[preset] if profile == "quick" else []) + (overrides or {}).get(preset, []) + [f"seed={seed}"]
            cfg = resolve_config(preset, sets, weights=weights if preset.startswith("mnet") else None)
            jobs.append(Job(preset, seed, Path(out) / "runs" / profile / f"{preset}-seed{seed}", cfg))
    return jobs


def estimate_seconds(cfg: Config, n_val: int = 10_000) -> float:
    """A rough cost model: training images, a validation pass per epoch (inference measured at about
    2x training speed for BASE/IMP), and the final evaluation, at measured speeds."""
    n = cfg.train_subset or 50_000
    if cfg.model.startswith("mobilenet"):
        final_eval = n_val / _SPEED["frozen_mobilenet"]  # the full model on images, once
        if not augment_config(cfg).enabled:
            return (n + n_val) / _SPEED["frozen_mobilenet"] + final_eval  # embedded once, the tail is cheap
        return cfg.epochs * (n + n_val) / _SPEED["frozen_mobilenet"] + final_eval
    speed = _SPEED[cfg.model]
    return cfg.epochs * (n / speed + n_val / (2 * speed)) + n_val / (2 * speed)


def is_finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("finished", False)
    except (OSError, ValueError):
        return False


def _stale(eval_json: Path, run_dir: Path) -> bool:
    return not eval_json.is_file() or eval_json.stat().st_mtime < (run_dir / "last.pt").stat().st_mtime


def reproduce(data: str | None, testset: str | None, out: Path, profile: str = "quick", seeds: int = 1,
              weights: str | None = None, quiet: bool = False,
              overrides: dict[str, list[str]] | None = None) -> Path:
    """Train, evaluate, tabulate and report; returns the report's index.html."""
    import torch

    from cifarlab.data import load_cifar10
    from cifarlab.data.augment import preview_grid
    from cifarlab.data.testset import load_testset
    from cifarlab.evaluate import evaluate_run
    from cifarlab.evaluate.compare import table2_rows, write_table2
    from cifarlab.evaluate.robustness import study_robustness
    from cifarlab.evaluate.testset import evaluate_testset, filter_preview
    from cifarlab.io import atomic_write
    from cifarlab.report import write_report
    from cifarlab.train import fit
    from cifarlab.viz import study_figures_all

    out = Path(out)
    jobs = plan(out, profile, seeds, weights, overrides)
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    cifar = load_cifar10(data, progress=not quiet)  # bad data fails here, before any run starts
    tests = {}
    if testset:
        tests = {"test": load_testset(testset, filtered=False), "test_filtered": load_testset(testset, filtered=True)}
        say(f"test set {testset}: {len(tests['test'].y)} photos, {len(tests['test'].skipped)} skipped")
    else:
        say("no test set (--testset or $CIFARLAB_TESTSET): Table 2's test columns will say so")

    estimates = [estimate_seconds(j.cfg) for j in jobs]
    t_start, spent_estimate = time.perf_counter(), 0.0
    for i, (job, est) in enumerate(zip(jobs, estimates), 1):
        elapsed = time.perf_counter() - t_start
        pace = elapsed / spent_estimate if spent_estimate else 1.0
        eta = pace * sum(estimates[i - 1:])
        name = f"[{i}/{len(jobs)}] {job.preset} seed {job.seed}"
        if is_finished(job.run_dir):
            say(f"{name}: finished run found in {job.run_dir}, reusing it")
        else:
            resume = (job.run_dir / "config.yaml").is_file()
            say(f"{name}: {'resuming' if resume else 'training'} (about {fmt_time(pace * est)} for this run, "
                f"{fmt_time(eta)} overall)")
            cfg = load_config(job.run_dir / "config.yaml") if resume else job.cfg
            fit(cfg, cifar, job.run_dir, resume=resume, quiet=quiet)
            spent_estimate += est
        if _stale(job.run_dir / "eval" / "validation.json", job.run_dir):
            say(f"{name}: evaluating on the validation set")
            evaluate_run(job.run_dir, cifar.val_x, cifar.val_y, "validation")
        for set_name, ts in tests.items():
            if _stale(job.run_dir / "eval" / f"{set_name}.json", job.run_dir):
                say(f"{name}: evaluating on {set_name}")
                evaluate_testset(job.run_dir, ts, set_name)

    run_dirs = [j.run_dir for j in jobs]
    # robustness on a class-balanced validation subset: cheap enough for the quick profile
    study_robustness(run_dirs, cifar, testset, out / "robustness", ROBUSTNESS_LIMIT[profile], say)
    study_figures_all(run_dirs, tests.get("test"), cifar, say)  # Appendix A/B/C figures into each RUN_DIR/viz/
    rows = table2_rows(run_dirs)
    md, _ = write_table2(rows, out, no_test=not testset)
    say(md.read_text())
    extra = {"augment_preview": out / "augment_preview.png"}
    first = torch.stack([torch.nonzero(cifar.val_y == c)[0, 0] for c in range(10)])  # one image per class
    grid = preview_grid(cifar.val_x[first], augment_config(resolve_config("imp2")), n_aug=8)
    atomic_write(extra["augment_preview"], lambda f: grid.save(f, format="PNG"))
    if testset:
        preview = out / "filter_preview.png"
        atomic_write(preview, lambda f: filter_preview(testset).save(f, format="PNG"))
        extra["filter_preview"] = preview
    notes = [QUICK_NOTE] if profile == "quick" else []
    notes.append(f"Data: {cifar.source}. Test set: {testset or 'none'}.")
    index = write_report(run_dirs, out / "report", table2=rows, notes=notes, extra_images=extra,
                         title=f"cifarlab: the study reproduced ({profile} profile)")
    say(f"report: {index} (total {fmt_time(time.perf_counter() - t_start)})")
    return index
