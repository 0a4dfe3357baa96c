"""The whole study from one call: train BASE, IMP1, IMP2, MNET1 and MNET2, evaluate each on the
validation set and on a real-photo test set (unfiltered and blurred), then the study-only stages
(robustness sweeps, the Appendix A/B/C figures), Table 2 and the report.

Runs live in OUT/runs/<profile>/<preset>-seed<k>; a finished run is reused, an interrupted one
resumes, and a stage's result is redone only when it is stale (`RunDir.is_stale`), so the command can
be stopped and started again at any point. The test set is loaded once and handed to every stage.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from cifarlab.config import resolve_config
from cifarlab.data.augment import augment_config
from cifarlab.errors import UserError
from cifarlab.profiles import (Job, Parts, auto_profile, default_jobs, estimate_plan, get_profile, plan, plan_parts,
                               plan_yaml, view_chains, wall_seconds)
from cifarlab.rundir import RunDir
from cifarlab.train.progress import fmt_time
from cifarlab.train.speed import fixed_speed, machine_speed

def reproduce(data: str | None, testset: str | None, out: Path, profile: str | None = None, seeds: int = 1,
              weights: str | None = None, quiet: bool = False, overrides: dict[str, list[str]] | None = None,
              jobs: int | None = None, dry_run: bool = False, storage: str | None = None,
              worker: bool = False) -> Path | None:
    """Plan, check every input, train (`jobs` runs at a time), evaluate, tabulate and report; returns the
    report's index.html (None for a dry run, which only prints the plan). With `storage` (an Optuna journal
    file or database URL) the runs are a study's grid that more processes join with `worker` (sweep.py);
    a worker only trains and returns None."""
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if profile is None:
        profile, why = auto_profile()
        say(f"profile: {profile} ({why}; choose with --profile study|laptop|quick)")
    prof = get_profile(profile)
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be positive, got {jobs}")
    n_lanes = jobs or default_jobs()
    out = Path(out)
    plan_jobs = plan(out, profile, seeds, weights, overrides)
    threads = max(1, (os.cpu_count() or 1) // n_lanes)
    fixed_speed()  # a bad CIFARLAB_MACHINE_SPEED fails now, not after the data has loaded
    if dry_run:
        speed = _machine_speed(plan_jobs, n_lanes, say)
        print(plan_yaml(plan_jobs, estimate_plan(plan_jobs, prof.robustness_limit, threads, speed), profile, n_lanes,
                        speed))
        return None
    if storage:  # the storage and the optional extra are checked before the data
        from cifarlab.sweep import open_storage

        store = open_storage(storage, out)
    cifar, tests = _check_inputs(plan_jobs, data, testset, quiet, say)  # seconds, not hours, before a failure
    if storage:
        from cifarlab.sweep import train_as_study

        train_as_study(f"reproduce-{prof.name}", [(j.run_dir, j.cfg) for j in plan_jobs], store, out, cifar, say)
        if worker:
            return None
    todo = [i for i, j in enumerate(plan_jobs) if not RunDir(j.run_dir).is_finished()]
    lanes = min(n_lanes, len(view_chains([plan_jobs[i].cfg for i in todo]))) or 1  # MNET1 -> MNET2: one lane
    speed = _machine_speed(plan_jobs, lanes, say) if todo else None
    parts = plan_parts(plan_jobs, prof.robustness_limit, max(1, (os.cpu_count() or 1) // lanes), speed, resumed=True)
    seconds = [sum(p) for p in parts]
    eta = _wall_seconds(plan_jobs, seconds, todo, lanes)
    on_cpu = speed is not None or not todo or not _on_gpu(plan_jobs)
    say(f"{prof.name} profile: {len(plan_jobs)} runs ({len(plan_jobs) - len(todo)} finished), {lanes} at a time; "
        + (f"ETA {fmt_time(eta)} with evaluation, robustness and figures (--dry-run prints the plan)" if on_cpu else
           "no ETA on a GPU (the cost model is a CPU's; each run's log gives its own from its epochs)"))
    if prof.name == "study" and speed is not None:  # probed: training on this CPU
        say("note: the study profile's recipes are for GPU machines; on this CPU they take the ETA above "
            "(--profile laptop: the same networks, data and augmentation, recipes chosen for time-to-accuracy)")
    t_start = time.perf_counter()
    # each run's own stages; in lanes they follow its training in the same process
    finish = [{"testset": testset, "limit": prof.robustness_limit, "figures": j.seed == 0} for j in plan_jobs]
    train_stage(plan_jobs, todo, parts, cifar, data, lanes, finish, quiet, say, eta=on_cpu)
    run_dirs = [j.run_dir for j in plan_jobs]
    # the same stages for all runs at once (the photo sweep decodes the photos once); what lanes did is fresh
    evaluate_stage(run_dirs, cifar, tests, say)
    study_robustness(run_dirs, cifar, tests.get("test"), out / "robustness", prof.robustness_limit, say)
    study_figures_all(run_dirs, tests.get("test"), cifar, say)  # Appendix A/B/C figures into each RUN_DIR/viz/
    for run, kw in zip(run_dirs, finish):  # any per-run stage the batched ones above do not cover (none today)
        finish_run(run, cifar, tests=tests, limit=kw["limit"], figures=kw["figures"], say=say)
    index = report_stage(run_dirs, cifar, tests, testset, out, prof, say)
    say(f"report: {index} (total {fmt_time(time.perf_counter() - t_start)}"
        + (f", estimated {fmt_time(eta)})" if on_cpu else ")"))
    return index


def _machine_speed(jobs: list[Job], lanes: int, say: Callable[[str], None]) -> dict[str, float] | None:
    """Where the runs train on the CPU, how this one compares with the cost model's (about 12 s of probing);
    None on a GPU (CUDA, MPS), where the CPU-fitted estimates do not apply."""
    if _on_gpu(jobs):
        return None
    speed = machine_speed(lanes)
    say(f"this CPU, {lanes} run(s) at a time: IMP training at {speed['train']:.2f}x, the MobileNet at "
        f"{speed['mobilenet']:.2f}x the speed of the machine the ETA's cost model was measured on")
    return speed


def _on_gpu(jobs: list[Job]) -> bool:
    from cifarlab.device import select_device

    return any(select_device(j.cfg.device).type != "cpu" for j in jobs)


def _check_inputs(jobs: list[Job], data: str | None, testset: str | None, quiet: bool,
                  say: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """Everything a profile needs, resolved before the first run starts: the data, the photo test set and
    the MobileNet weights (read, or downloaded, now: offline without --weights fails here, in seconds)."""
    from cifarlab.data import load_cifar10
    from cifarlab.data.testset import load_testset
    from cifarlab.models import create_model
    from cifarlab.models.weights import load_weights

    cifar = load_cifar10(data, progress=not quiet)
    for spec in sorted({(j.cfg.model, j.cfg.alpha, j.cfg.weights, j.cfg.input_size) for j in jobs if j.cfg.weights},
                       key=str):
        model, alpha, source, size = spec
        try:
            load_weights(create_model(model, alpha=alpha), source, input_size=size)
        except UserError as e:
            raise UserError(f"{e} (MobileNet weights for MNET1/MNET2: pass --weights FILE)") from None
    tests = {}
    if testset:
        tests = {"test": load_testset(testset, filtered=False), "test_filtered": load_testset(testset, filtered=True)}
        say(f"test set {testset}: {len(tests['test'].y)} photos, {len(tests['test'].skipped)} skipped")
    else:
        say("no test set (--testset or $CIFARLAB_TESTSET): Table 2's test columns will say so")
    return cifar, tests


def _wall_seconds(jobs: list[Job], seconds: list[float], todo: list[int], lanes: int) -> float:
    """Time still to come with `lanes` runs at a time (finished runs cost nothing: their evaluation is
    redone only if stale)."""
    return wall_seconds([j.cfg for j in jobs], [seconds[i] if i in todo else 0.0 for i in range(len(jobs))], lanes)


def train_stage(jobs: list[Job], todo: list[int], parts: list[Parts], cifar: Any, data: str | None, lanes: int,
                finish: list[dict], quiet: bool, say: Callable[[str], None], eta: bool = True) -> None:
    """Train the unfinished runs: in this process one after another, or in `lanes` processes at once
    (each then also does its run's `finish_run` stages)."""
    from cifarlab.lanes import train_in_lanes
    from cifarlab.loggers import loggers_for
    from cifarlab.train import fit

    for i, job in enumerate(jobs):
        if i not in todo:
            say(f"{job.run_dir.name}: finished run found in {job.run_dir}, reusing it")
        changed = _changed_keys(job)
        if changed:
            say(f"note: {job.run_dir.name} was made with other settings than the plan's ({', '.join(changed)}); "
                f"{'reusing' if i not in todo else 'resuming'} it as it is: delete {job.run_dir} to train it afresh")
    if lanes > 1:
        runs = [(jobs[i].run_dir, RunDir(jobs[i].run_dir).load_config() if RunDir(jobs[i].run_dir).config.is_file()
                 else jobs[i].cfg) for i in todo]
        train_in_lanes(runs, [parts[i] for i in todo], data, lanes, say, finish=[finish[i] for i in todo], eta=eta)
        return
    for i in todo:
        job, rd = jobs[i], RunDir(jobs[i].run_dir)
        resume = rd.config.is_file()
        say(f"{job.run_dir.name}: {'resuming' if resume else 'training'}"
            + (f" (about {fmt_time(sum(parts[i]))})" if eta else ""))
        cfg = rd.load_config() if resume else job.cfg
        fit(cfg, cifar, job.run_dir, resume=resume, quiet=quiet, callbacks=loggers_for(cfg, cifar))  # config key log


def finish_run(run: Path, cifar: Any, *, tests: dict[str, Any] | None = None, testset: str | None = None,
               limit: int | None = None, figures: bool = True, say: Callable[[str], None] = print) -> None:
    """One run's stages after training, each only if stale: validation and photo-set results, its
    robustness results (pooled across runs later), its Appendix figures. `tests`: the loaded photo sets,
    or `testset`, a folder to load them from (in a lane's process)."""
    from cifarlab.data.testset import load_testset

    if tests is None:
        tests = {"test": load_testset(testset, filtered=False),
                 "test_filtered": load_testset(testset, filtered=True)} if testset else {}
    evaluate_stage([run], cifar, tests, say)
    robustness_runs([run], cifar, tests.get("test"), limit, say)
    if figures:
        study_figures_all([run], tests.get("test"), cifar, say)  # Appendix A/B/C figures into RUN_DIR/viz/


def _changed_keys(job: Job) -> list[str]:
    """Config keys whose value in the run directory differs from the plan's (a preset edited since; prose
    and where-to-run keys aside)."""
    rd = RunDir(job.run_dir)
    if not rd.config.is_file():
        return []
    ran, planned = rd.load_config().to_dict(), job.cfg.to_dict()
    return [k for k in planned if k not in ("data", "device", "weights", "description", "log")
            and ran.get(k) != planned[k]]


def evaluate_stage(run_dirs: list[Path], cifar: Any, tests: dict[str, Any], say: Callable[[str], None]) -> None:
    """Validation and photo-set results for every run whose result is stale."""
    from cifarlab.evaluate import evaluate_run
    from cifarlab.evaluate.testset import evaluate_testset

    for run in run_dirs:
        rd = RunDir(run)
        if rd.is_stale(rd.eval_json("validation")):
            say(f"{run.name}: evaluating on the validation set")
            evaluate_run(run, cifar.val_x, cifar.val_y, "validation")
        for set_name, ts in tests.items():
            if rd.is_stale(rd.eval_json(set_name)):
                say(f"{run.name}: evaluating on {set_name}")
                evaluate_testset(run, ts, set_name)


def report_stage(run_dirs: list[Path], cifar: Any, tests: dict[str, Any], testset: str | None, out: Path,
                 prof: Any, say: Callable[[str], None]) -> Path:
    """Table 2, the augmentation and filter previews, and the HTML report."""
    import torch

    from cifarlab.data.augment import preview_grid
    from cifarlab.evaluate.compare import table2_rows, write_table2
    from cifarlab.evaluate.findings import check_findings, format_findings
    from cifarlab.evaluate.testset import filter_preview
    from cifarlab.io import write_text
    from cifarlab.pictures import save_png
    from cifarlab.report import write_report

    rows = table2_rows(run_dirs)
    md, _ = write_table2(rows, out, no_test=not tests)
    say(md.read_text())
    found = check_findings(rows, len(cifar.val_y), len(tests["test"].y) if tests else 0)
    write_text(out / "findings.md", f"The study's findings against this run ({prof.name} profile); 'not clear' means "
               "within two standard errors.\n\n" + format_findings(found) + "\n")
    say(format_findings(found))
    extra = {"augment_preview": out / "augment_preview.png"}
    first = torch.stack([torch.nonzero(cifar.val_y == c)[0, 0] for c in range(10)])  # one image per class
    grid = preview_grid(cifar.val_x[first], augment_config(resolve_config("imp2")), n_aug=8)
    save_png(grid, extra["augment_preview"])
    if tests:
        preview = out / "filter_preview.png"
        save_png(filter_preview(tests["test"]), preview)
        extra["filter_preview"] = preview
    notes = [prof.note, f"Data: {cifar.source}. Test set: {testset or 'none'}."]
    notes += [f"Finding ({f['id']}) {f['claim']}: {f['verdict']} ({f['ours']})." for f in found]
    return write_report(run_dirs, out / "report", table2=rows, notes=notes, extra_images=extra,
                        title=f"cifarlab: the study reproduced ({prof.name} profile)")


# ---------------------------------------------------------------- study-only stages

def study_robustness(run_dirs: list[Path], cifar: Any, testset: Any, out: Path, limit: int | None,
                     say: Callable[[str], None]) -> list[Path]:
    """Every corruption on a validation subset, the blur sweep on the test photos (a loaded TestSet, or
    None) and calibration, for runs whose eval/robustness.json is stale; then the cross-run tables and
    figures in out/."""
    from cifarlab.evaluate.robustness import load_results, write_outputs
    from cifarlab.report.robustness_figures import write_figures

    robustness_runs(run_dirs, cifar, testset, limit, say)
    results = [r for r in map(load_results, run_dirs) if r]
    return write_outputs(results, out) + write_figures(results, out)


def robustness_runs(run_dirs: list[Path], cifar: Any, testset: Any, limit: int | None,
                    say: Callable[[str], None]) -> None:
    """Each run's robustness results (RUN_DIR/eval/robustness.json), for runs whose results are stale."""
    from cifarlab.data.corruptions import CORRUPTIONS
    from cifarlab.evaluate.robustness import RESULT, run_robustness

    stale = [Path(r) for r in run_dirs if RunDir(r).is_stale(RunDir(r).eval_json(RESULT))]
    if stale:
        say(f"robustness: {len(stale)} run(s), {limit or 'all'} validation images")
        run_robustness(stale, val_x=cifar.val_x, val_y=cifar.val_y, data_source=cifar.source, testset=testset,
                       corruptions=list(CORRUPTIONS), limit=limit, say=say)


STUDY_KINDS = ("occlusion", "gradcam", "gradcam++")  # Score-CAM costs a forward pass per channel: CLI only
STUDY_EXAMPLES = ("truck", "airplane")  # the study's Appendix A photos
STUDY_MAX_WRONG = 8


def study_figures(run_dir: str | Path, photos: Any, *, steps: int = 40, quiet: bool = False) -> list[Path]:
    """The report's figures for one run, in RUN_DIR/viz/: activations of two example photos (a truck
    and an airplane, as in the study), filter images (few channels and steps: seconds), and occlusion
    and CAM sheets of up to 8 misclassified photos (`photos`: viz.Photos). Skipped when not stale."""
    import torch

    from cifarlab import CLASSES
    from cifarlab.viz import load_probe, output_name, render, sheet

    rd = RunDir(run_dir)
    viz = rd.viz_dir
    names = ["activations.png", "filters.png"] + [output_name(k) for k in STUDY_KINDS]
    if not rd.last.is_file():
        raise UserError(f"{rd.path}: not a trained run directory (no last.pt)")
    if not any(rd.is_stale(viz / n) for n in names[:2]):
        return []
    viz.mkdir(exist_ok=True)
    probe = load_probe(rd.path)
    written = []
    with torch.no_grad():
        pred = torch.cat([probe.probs(probe.to_input(x)).argmax(1) for x in photos.x.split(64)])
    wrong = [i for i, (p, y) in enumerate(zip(pred.tolist(), photos.labels)) if y is not None and p != y]
    if len(wrong) > STUDY_MAX_WRONG:  # spread over the classes rather than the first class folder's
        wrong = [wrong[round(j * (len(wrong) - 1) / (STUDY_MAX_WRONG - 1))] for j in range(STUDY_MAX_WRONG)]
    for kind, name in zip(STUDY_KINDS, names[2:]):
        if wrong:
            patch = max(2, probe.input_size // 8)  # non-overlapping patches: 64 forward passes, not 225
            opts = {"patch": patch, "stride": patch} if kind == "occlusion" else {}
            written.append(sheet.save_png(render([probe], kind, photos.take(wrong), **opts), viz / name))
        else:
            (viz / name).unlink(missing_ok=True)  # an older model's misclassifications no longer apply
    # activations and filters last: being fresh, they say the whole stage is (a kill before them redoes it)
    examples = [next((i for i, y in enumerate(photos.labels) if y == CLASSES.index(c)), None) for c in STUDY_EXAMPLES]
    examples = [i for i in examples if i is not None] or [0]
    written.append(sheet.save_png(render([probe], "activations", photos.take(examples)), viz / names[0]))
    tried = 8 if probe.input_size > 32 else 16  # a MobileNet step costs ~15x an IMP step
    written.append(sheet.save_png(render([probe], "filters", channels=tried, keep=8, steps=steps), viz / names[1]))
    if not quiet:
        print(f"{rd.path}: wrote {len(written)} figures to {viz} ({len(wrong)} misclassified shown)", file=sys.stderr)
    return written


def study_figures_all(run_dirs: list[Path], testset: Any = None, cifar: Any = None,
                      say: Callable[[str], None] = print) -> None:
    """`study_figures` for the first run of each preset (seeds add nothing to the pictures), on the test
    photos (a loaded TestSet), or without a test set on the first 500 CIFAR-10 validation images."""
    import torch

    from cifarlab.viz import Photos, from_testset

    if testset is not None:
        photos = from_testset(testset)
    elif cifar is not None:
        n = min(500, len(cifar.val_y))
        photos = Photos(cifar.val_x[:n].cpu(), cifar.val_y[:n].tolist(), [f"val/{i:05d}" for i in range(n)])
    else:
        return
    threads = torch.get_num_threads()
    # Small batches of small images: thread barriers cost more than they save, many times more when
    # another process keeps a core busy (measured on 2 cores: filter steps 5x slower with 2 threads).
    torch.set_num_threads(1)
    try:
        _each_preset(run_dirs, photos, say)
    finally:
        torch.set_num_threads(threads)


def _each_preset(run_dirs: list[Path], photos: Any, say: Callable[[str], None]) -> None:
    seen: set[str] = set()
    for run in map(Path, run_dirs):
        preset = RunDir(run).load_config().preset or run.name
        if preset in seen:
            continue
        seen.add(preset)
        t = time.perf_counter()
        if study_figures(run, photos, quiet=True):
            say(f"{run}: visualisations in {RunDir(run).viz_dir} ({time.perf_counter() - t:.0f} s)")
