"""Train a plan's runs several at a time: N lanes, each a sequence of runs in its own process with
cores/N threads.

Why: on a 2-core CPU a training process does not scale to two threads: two one-thread runs side by
side give 1.24-1.35x the throughput of one two-thread run (benchmarks/lanes_speed.py, RESULTS.md). Runs that share a MobileNet view cache (MNET1 and MNET2 of one seed) go in the same lane, in plan
order, so the cache is built once and never waited for. Lanes are filled longest-first (LPT).

A lane's process is `python -m cifarlab.lanes SPEC_JSON`: it trains the run whose config.yaml the parent
wrote (or resumes it) under the usual run control, quietly, into RUN_DIR/train.log, then (with `finish`)
does the run's own evaluation stages (reproduce.finish_run), so a lane that is done training evaluates
while another still trains. Each lane's process has its own session, so a signal meant for the study
(Ctrl-C, `kill -INT`/`-TERM`, a scheduler's stop) reaches it once, from the parent: each stops at a
batch boundary keeping its last epoch. If a run fails, or the parent itself fails, the other lanes are
stopped the same way; a run's one-line error is raised.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from cifarlab.config import Config, load_config, save_config
from cifarlab.errors import UserError
from cifarlab.profiles import Parts, assign, view_chains
from cifarlab.train.progress import fmt_time
from cifarlab.train.runctl import Interrupted


def _history(run_dir: Path) -> list[dict[str, str]]:
    try:
        with open(run_dir / "history.csv") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def progress_line(run_dir: Path, epochs: int) -> str:
    """'imp2-laptop 7/40 (val 71.2 %)' from the run's history.csv (written atomically after each epoch)."""
    rows = _history(run_dir)
    if not rows:
        return f"{run_dir.name} starting"
    return f"{run_dir.name} {rows[-1]['epoch']}/{epochs} (val {float(rows[-1]['val_acc']):.1%})"


def eta_seconds(lanes: list[list[int]], runs: Sequence[tuple[Path, Config]], parts: Sequence[Parts],
                done: set[int], now: float, started: dict[int, float], before: dict[int, int]) -> float:
    """Wall seconds left: the slowest lane's estimated work still to do, times that lane's pace (the wall
    time of this session's epochs over their estimate; 1 until it has one), less the time already spent
    in each running run's current phase (before its first epoch, an epoch, after its last), down to none
    of it: the ETA counts down between epochs instead of jumping at each. `parts[i]`: run i's
    work from this session's start (reproduce estimates a resumed run's rest); `started[i]`: when it
    started (time.time()); `before[i]`: the epochs it had then."""
    left = []
    for lane in lanes:
        history = {i: _history(runs[i][0]) for i in lane}
        measured = estimated = 0.0
        for i in lane:  # the pace: this session's epochs, measured against their estimate
            epochs, had = runs[i][1].epochs, before.get(i, 0)
            new = history[i][had:]
            measured += sum(float(r["seconds"]) for r in new)
            estimated += len(new) * parts[i][1] / max(epochs - had, 1)
        pace = measured / estimated if measured > 0 and estimated > 0 else 1.0
        rest = 0.0
        for i in lane:
            if i in done:
                continue
            b, t, a = parts[i]
            if i not in started:
                rest += (b + t + a) * pace
                continue
            epochs, had = runs[i][1].epochs, before.get(i, 0)
            n, per_epoch = len(history[i]), t / max(epochs - had, 1)
            if n == had:  # embedding its views or in its first epoch (with every epoch kept: finishing)
                since = now - started[i]
                phase, later = (b + per_epoch, t - per_epoch + a) if epochs > had else (b + a, 0.0)
            else:  # in an epoch, or after its last
                since = now - _mtime(runs[i][0] / "history.csv", now)
                phase, later = (per_epoch, per_epoch * (epochs - n - 1) + a) if n < epochs else (a, 0.0)
            rest += later * pace + max(0.0, phase * pace - since)  # a phase running late: the pace catches up
        left.append(rest)
    return max(left)


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return default


def train_in_lanes(runs: Sequence[tuple[Path, Config]], costs: Sequence[float | Parts], data: str | None,
                   n_lanes: int, say: Callable[[str], None], every: float = 60.0,
                   finish: list[dict] | None = None, eta: bool = True) -> None:
    """Train every (run_dir, cfg) in n_lanes processes; returns when all are finished. costs[i]: run i's
    estimated seconds, or its `Parts` (profiles.plan_parts), for the lanes' balance and the ETA. finish[i],
    if given, holds the keyword arguments of reproduce.finish_run for run i (done in its lane after training).
    `eta`: end each progress line with the ETA (off where the estimates are not this machine's: a GPU)."""
    parts = [c if isinstance(c, tuple) else (0.0, float(c), 0.0) for c in costs]
    lanes = assign(view_chains([c for _, c in runs]), [sum(p) for p in parts], n_lanes)
    threads = max(1, (os.cpu_count() or 1) // len(lanes))  # chains, not runs: MNET1 -> MNET2 is one lane
    for run_dir, cfg in runs:
        if not (run_dir / "config.yaml").is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
    say(f"training {len(runs)} runs in {len(lanes)} lanes of {threads} thread(s): "
        + "; ".join(" -> ".join(runs[i][0].name for i in lane) for lane in lanes))
    active: dict[int, tuple[Path, int]] = {}  # lane -> (run_dir, epochs) now training
    failures: list[str] = []
    procs: dict[int, subprocess.Popen] = {}
    signalled: set[int] = set()  # pids told to stop: a second signal would stop them mid-batch
    stop, lock = threading.Event(), threading.Lock()  # lock: no lane starts a process once stop is set
    done: set[int] = set()
    started: dict[int, float] = {}  # run -> when it started (time.time(), like history.csv's mtime), for the ETA
    before = {i: len(_history(run_dir)) for i, (run_dir, _) in enumerate(runs)}  # epochs kept from earlier

    def halt(sig: int) -> None:
        """Stop every lane at its next batch boundary (each process told once) and start no more runs."""
        with lock:
            stop.set()
            for p in procs.values():
                if p.poll() is None and p.pid not in signalled:
                    signalled.add(p.pid)
                    p.send_signal(sig)

    def lane_worker(k: int, lane: list[int]) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CIFARLAB_THREADS": str(threads)}
        for i in lane:
            run_dir, cfg = runs[i]
            spec = {"run_dir": str(run_dir), "data": data, "finish": finish[i] if finish else None}
            cmd = [sys.executable, "-m", "cifarlab.lanes", json.dumps(spec)]
            try:
                with lock:
                    if stop.is_set():
                        return
                    active[k] = (run_dir, cfg.epochs)
                    started[i] = time.time()
                    # Its own session: a signal meant for the study (Ctrl-C, `kill -INT`/`-TERM` of this
                    # process, a scheduler's stop) reaches the lanes once, from here, however it was sent.
                    procs[k] = p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                    text=True, start_new_session=True)
                _, err = p.communicate()
            except Exception as e:  # noqa: BLE001 - a lane that cannot run says why instead of vanishing
                failures.append(f"{run_dir.name}: {e}")
                stop.set()
                return
            if p.returncode != 0:
                lines = [ln for ln in err.strip().splitlines() if ln.strip()]
                failures.append(f"{run_dir.name}: {lines[-1] if lines else f'exit code {p.returncode}'}")
                stop.set()
                return
            done.add(i)
            say(f"{run_dir.name}: finished ({progress_line(run_dir, cfg.epochs)})")
        active.pop(k, None)

    workers = [threading.Thread(target=lane_worker, args=(k, lane), daemon=True) for k, lane in enumerate(lanes)]
    for w in workers:
        w.start()
    # SIGINT and SIGTERM stop the lanes, also where the shell started us with SIGINT ignored (a background job)
    old = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        last = time.monotonic()
        while any(w.is_alive() for w in workers):
            time.sleep(0.5)
            if stop.is_set():  # one run failed: stop the others at their next batch boundary
                halt(signal.SIGTERM)
            if time.monotonic() - last >= every:
                last = time.monotonic()
                try:  # a progress line is cosmetic: an odd history.csv skips it, never stops the study
                    line = " | ".join(progress_line(d, e) for d, e in list(active.values()))
                    if eta:
                        line += f" | ETA {fmt_time(eta_seconds(lanes, runs, parts, done, time.time(), started, before))}"
                except (ValueError, TypeError, KeyError, csv.Error):
                    continue
                say("  " + line)
    except BaseException as e:  # Ctrl-C, or this process failing: no lane trains on, orphaned, holding its lock
        halt(signal.SIGINT)
        for w in workers:
            w.join()
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted("interrupted: each run keeps its last finished epoch; run the same command again "
                              "to resume") from None
        raise
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if failures:
        raise UserError(failures[0])


def _worker_main(spec_json: str) -> int:
    """One lane's run: train RUN_DIR from its config.yaml, resuming from last.pt if there is one, then its
    finishing stages. Errors end as one stderr line (the parent quotes the last line), like the CLI's."""
    import torch

    from cifarlab.data import load_cifar10
    from cifarlab.memory import keep_freed_memory
    from cifarlab.loggers import loggers_for
    from cifarlab.train import fit

    spec = json.loads(spec_json)
    torch.set_num_threads(int(os.environ.get("CIFARLAB_THREADS", "1")))
    keep_freed_memory()
    path = Path(spec["run_dir"])
    try:
        cfg = load_config(path / "config.yaml")
        cifar = load_cifar10(spec["data"] or cfg.data, progress=False)
        fit(cfg, cifar, path, resume=(path / "last.pt").is_file(), quiet=True, callbacks=loggers_for(cfg, cifar))
        if spec["finish"] is not None:
            from cifarlab.reproduce import finish_run  # the study's per-run stages (same layer)

            finish_run(path, cifar, say=lambda msg: None, **spec["finish"])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1]))
