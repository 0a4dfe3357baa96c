"""`cifarlab sweep`: many independent runs (seeds, presets, a learning-rate search) shared by any number of
worker processes on any number of machines through one Optuna study, kept in a journal file on a
filesystem every worker sees (default SWEEP_DIR/journal.log) or in a database (postgresql://...).

SPEC.yaml names a preset, the data, fixed overrides, the objective (validation accuracy, or accuracy on
a photo test set) and either a `grid` (every combination, each trained once) or a `space` (a TPE search
of `trials` runs, pruned on per-epoch validation accuracy). Every trial is an ordinary run directory,
SWEEP_DIR/runs/<params>, named from its parameters alone, so compare, report, robustness and app read
it unchanged, and a trial that is retried trains into (and resumes) the same directory.

Why the pieces are as they are:
- A grid's cells are queued once, as Optuna WAITING trials (`enqueue_trial`), by the one worker that
  creates the study (creating a study is atomic in both storages), and a worker takes a queued trial
  atomically: each cell goes to one worker. Not GridSampler: its random pick may hand one cell to two
  workers asking at the same moment (its documentation says so), and it does not know queued trials.
- A worker killed mid-trial (kill -9, a lost machine) stops sending heartbeats; the next worker to look
  fails its trial and RetryHeartbeatStaleTrialCallback queues the same parameters again. RDBStorage has
  heartbeats built in; Optuna 5 has none for the journal file, so `_journal_storage` adds them the same
  way (the time of the last beat in a trial attribute), and Optuna's own `fail_stale_trials` does the rest.
- Two trials never train one run directory at once: the run lock refuses the second, which waits here
  until the first has finished or died, then reuses or resumes what it left (a directory counts as
  done only when `RunDir.is_finished`).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import random
import re
import socket
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from cifarlab.config import AugmentConfig, Config, resolve_config
from cifarlab.errors import UserError
from cifarlab.rundir import RunDir

SPEC_KEYS = ("description", "preset", "data", "subset", "epochs", "set", "objective", "testset", "filtered",
             "grid", "space", "trials", "prune")
OBJECTIVES = ("val_accuracy", "testset")
HEARTBEAT = 10  # seconds between a running trial's heartbeats (--heartbeat)
GRACE = 3  # a trial silent for GRACE heartbeats is taken for dead: slack for a worker on a busy machine
MAX_RETRY = 3  # a cell whose worker dies this many times in a row is left failed
QUEUE_WAIT = 60.0  # seconds a joining worker waits for the study's creator to queue the grid
INSTALL = "pip install 'cifarlab[sweep]'"


@dataclass(frozen=True)
class Dim:
    """One dimension of a search space: a float or int range (optionally log-scaled) or a list of choices."""
    kind: str  # float | int | choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: Any, name: str) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def ends(self) -> list[Any]:
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]


@dataclass
class Sweep:
    """What a worker needs: the study's name, where runs go, how parameters become a run, what to maximise."""
    name: str
    out: Path  # SWEEP_DIR: journal.log, runs/, the summary
    make: Callable[[dict[str, Any]], tuple[Path, Config]]  # params -> (run directory, config)
    grid: dict[str, list[Any]] | None = None
    space: dict[str, Dim] | None = None
    trials: int = 0  # a search's budget; a grid's cell count
    prune: bool = False
    objective: str = "val_accuracy"
    testset: str | None = None
    filtered: bool = False
    data: str | None = None
    device: str | None = None

    @property
    def metric(self) -> str:
        """What the objective's value is, in words for tables."""
        return ("test_filtered" if self.filtered else "test") + "_accuracy" if self.objective == "testset" \
            else "val_accuracy"


# ---------------------------------------------------------------- SPEC.yaml

def load_spec(path: str | Path, out: str | Path | None = None) -> Sweep:
    """Read and check SPEC.yaml, resolving every grid cell (or both ends of every search dimension) into a
    config now: a typo in a key or a value out of range is one line before any training."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read the sweep spec ({e.strerror or e})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]})") from None

    def bad(msg: str) -> UserError:
        return UserError(f"{path}: {msg}")

    if not isinstance(raw, dict):
        raise bad("a sweep spec is a mapping (preset, grid or space, ...; see examples/sweeps/)")
    for key in raw:
        if key not in SPEC_KEYS:
            close = difflib.get_close_matches(str(key), SPEC_KEYS, n=1)
            raise bad(f"unknown key '{key}' (known: {', '.join(SPEC_KEYS)})"
                      + (f"; did you mean '{close[0]}'?" if close else ""))
    grid, space = raw.get("grid"), raw.get("space")
    if (grid is None) == (space is None):
        raise bad("give either 'grid' (every combination, each run once) or 'space' (a search), not both or neither")
    objective = raw.get("objective", "val_accuracy")
    if objective not in OBJECTIVES:
        raise bad(f"'objective' must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    testset = raw.get("testset")
    if (objective == "testset") != (testset is not None):
        raise bad("'objective: testset' and 'testset: DIR' (a photo folder, DIR/<class>/<photo>) go together")
    if not isinstance(raw.get("filtered", False), bool):
        raise bad("'filtered' must be true or false")
    fixed = _fixed_overrides(raw, bad)
    preset = raw.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise bad(f"'preset' must be a preset's name, got {preset!r}")
    sweep_out = Path(out) if out else Path("sweeps") / path.stem

    def make(params: dict[str, Any]) -> tuple[Path, Config]:
        p = dict(params)
        name = p.pop("preset", preset)
        cfg = resolve_config(name, fixed + [f"{k}={json.dumps(v)}" for k, v in sorted(p.items())])
        return sweep_out / "runs" / run_name(params), cfg

    sweep = Sweep(name="", out=sweep_out, make=make, objective=objective, testset=testset,
                  filtered=raw.get("filtered", False), data=raw.get("data"))
    if grid is not None:
        sweep.grid = _parse_grid(grid, bad)
        if preset is None and "preset" not in sweep.grid:
            raise bad("'preset' is required (or a grid over 'preset')")
        cells = grid_cells(sweep.grid)
        sweep.trials = len(cells)
        for cell in cells:
            _check(make, cell, bad, "grid")
        sweep.prune = bool(raw.get("prune", False))
    else:
        if preset is None:
            raise bad("'preset' is required")
        sweep.space = _parse_space(space, preset, fixed, bad)
        trials = raw.get("trials", 10)
        if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
            raise bad(f"'trials' must be a positive integer, got {trials!r}")
        sweep.trials = trials
        sweep.prune = bool(raw.get("prune", True))
        low = {k: d.ends()[0] for k, d in sweep.space.items()}
        for key, dim in sweep.space.items():
            for value in dim.ends():
                _check(make, {**low, key: value}, bad, "space")
    if not isinstance(raw.get("prune", False), bool):
        raise bad("'prune' must be true or false")
    # the study's name: the spec's file name and what it asks for (not where the data lives, which may
    # differ between machines); an edited spec starts a new study, and reuses runs whose config is unchanged
    what = {"preset": preset, "fixed": fixed, "grid": sweep.grid, "objective": sweep.metric, "trials": sweep.trials,
            "space": {k: dataclasses.asdict(d) for k, d in (sweep.space or {}).items()}, "prune": sweep.prune}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]
    sweep.name = f"{re.sub(r'[^A-Za-z0-9_.-]', '-', path.stem)}-{digest}"
    return sweep


def _fixed_overrides(raw: dict[str, Any], bad: Callable[[str], UserError]) -> list[str]:
    """subset, epochs and `set: {key: value}` as `--set` strings, in that order."""
    out = []
    for key, cfg_key in (("subset", "train_subset"), ("epochs", "epochs")):
        if raw.get(key) is not None:
            out.append(f"{cfg_key}={json.dumps(raw[key])}")
    sets = raw.get("set") or {}
    if not isinstance(sets, dict):
        raise bad("'set' is a mapping of config keys to values, e.g. set: {lr: 0.2, augment.rotation: 10}")
    out += [f"{k}={json.dumps(v)}" for k, v in sets.items()]
    return out


def _parse_grid(grid: Any, bad: Callable[[str], UserError]) -> dict[str, list[Any]]:
    if not isinstance(grid, dict) or not grid:
        raise bad("'grid' is a mapping of config keys to lists of values, e.g. grid: {seed: [0, 1, 2]}")
    out = {}
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise bad(f"grid: '{key}' needs a non-empty list of values, got {values!r}")
        if any(not isinstance(v, (str, int, float, bool)) for v in values):
            raise bad(f"grid: '{key}': each value must be a number, a string or true/false, got {values!r}")
        if len(set(map(json.dumps, values))) != len(values):
            raise bad(f"grid: '{key}' lists a value twice: {values!r}")
        out[str(key)] = values
    return out


def _parse_space(space: Any, preset: str, fixed: list[str], bad: Callable[[str], UserError]) -> dict[str, Dim]:
    """`key: [low, high]` (uniform; whole numbers for an integer key), `key: {log: [low, high]}` or
    `key: {choice: [a, b, ...]}`."""
    if not isinstance(space, dict) or not space:
        raise bad("'space' is a mapping of config keys to ranges, e.g. space: {lr: {log: [0.05, 1.0]}}")
    out = {}
    for key, spec in space.items():
        key = str(key)
        log = isinstance(spec, dict) and "log" in spec
        if isinstance(spec, dict) and set(spec) == {"choice"} and isinstance(spec["choice"], list) and spec["choice"]:
            if any(not isinstance(v, (str, int, float, bool)) for v in spec["choice"]):
                raise bad(f"space: '{key}': each choice must be a number, a string or true/false")
            out[key] = Dim("choice", choices=tuple(spec["choice"]))
            continue
        bounds = spec.get("log") if isinstance(spec, dict) and set(spec) == {"log"} else spec
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)):
            raise bad(f"space: '{key}': expected [low, high], {{log: [low, high]}} or {{choice: [...]}}, got {spec!r}")
        low, high = (float(b) for b in bounds)
        if not low < high or (log and low <= 0):
            raise bad(f"space: '{key}': need low < high" + (" and low > 0 for log" if log else "") + f", got {bounds}")
        if key != "preset":  # an unknown key fails here with the config's own "did you mean"
            try:
                resolve_config(preset, fixed + [f"{key}={json.dumps(bounds[0])}"])
            except UserError as e:
                raise bad(f"space: {e}") from None
        whole = "int" in _field_type(key) and all(float(b).is_integer() for b in bounds)
        out[key] = Dim("int" if whole else "float", low, high, log)
    return out


def _field_type(key: str) -> str:
    """The declared type of config key `key` ('int', 'float', 'int | None', ...; '' if unknown)."""
    section, _, leaf = key.rpartition(".")
    cls = AugmentConfig if section == "augment" else Config
    return next((str(f.type) for f in dataclasses.fields(cls) if f.name == (leaf if section else key)), "")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(make: Callable, params: dict[str, Any], bad: Callable[[str], UserError], where: str) -> None:
    try:
        make(params)
    except UserError as e:
        raise bad(f"{where} {_describe(params)}: {e}") from None


def grid_cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def run_name(params: dict[str, Any]) -> str:
    """The run directory's name, from the parameters alone (a retried trial finds its predecessor's):
    'lr=0.2_seed=1'; floats exact (repr), so two distinct values never share a directory."""
    parts = [f"{k}={_fmt(v)}" for k, v in sorted(params.items())]
    name = re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(parts)) or "run"
    if len(name) > 120:  # long names stay readable at the front and unique by a hash
        name = f"{name[:100]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


def _fmt(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else repr(v) if isinstance(v, float) else str(v)


def _describe(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items())) or "(no parameters)"


# ---------------------------------------------------------------- storage and study

def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError(f"sweeps need Optuna: {INSTALL}") from None
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, plots
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # workers print their own one line per trial
    return optuna


def is_database(url: str | None) -> bool:
    return bool(url) and "://" in str(url)


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)


def open_storage(url: str | None, out: Path, heartbeat: int = HEARTBEAT) -> Any:
    """The study's storage, reachable: a database URL (checked by connecting now), else a journal file
    (default SWEEP_DIR/journal.log). Each runs heartbeats and requeues a dead worker's trial."""
    optuna = _optuna()
    if heartbeat < 1:
        raise UserError(f"--heartbeat must be at least 1 second, got {heartbeat}")
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True)
    if is_database(url):
        return _database(optuna, url, heartbeat, retry)
    path = Path(url) if url else Path(out) / "journal.log"
    if url and not path.parent.is_dir():
        raise UserError(f"--storage {path}: folder {path.parent} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _journal_storage(optuna, path, heartbeat, retry)


def _database(optuna: Any, url: str, heartbeat: int, retry: Any) -> Any:
    # postgresql:// means psycopg 3 (the [sweep] extra's driver) whichever default SQLAlchemy has (2.0: psycopg2)
    engine_url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)
    import sqlalchemy.exc

    connect = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgres") else {}
    try:
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(engine_url, engine_kwargs=connect, heartbeat_interval=heartbeat,
                                                  grace_period=GRACE * heartbeat, heartbeat_stale_trial_callback=retry)
            except sqlalchemy.exc.DBAPIError as e:
                # workers starting together on an empty database race to create Optuna's tables (a unique
                # violation or "already exists" for all but one): the next try finds them made
                if isinstance(e, sqlalchemy.exc.OperationalError) or attempt == 4:
                    raise
                time.sleep(0.5 + random.random())
    except ImportError as e:  # the database's driver (psycopg 3 for PostgreSQL)
        raise UserError(f"--storage {safe_url(url)}: its database driver is not installed (for PostgreSQL: psycopg "
                        f"3): {INSTALL}") from None
    except Exception as e:  # sqlalchemy's OperationalError, ArgumentError, ...: many lines, the first says why
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise UserError(f"--storage {safe_url(url)}: cannot use the database ({first[:300]})") from None


def _journal_storage(optuna: Any, path: Path, heartbeat: int, retry: Any) -> Any:
    """Optuna's JournalStorage with RDBStorage's heartbeat protocol: a running trial's worker records the
    time in the trial's system attribute 'heartbeat' every `heartbeat` s; a RUNNING trial whose last beat
    (or start) is older than GRACE beats is stale. Workers' clocks must agree (NTP), as they do on a cluster."""
    from optuna.storages import JournalStorage
    from optuna.storages._heartbeat import BaseHeartbeat  # the protocol RDBStorage implements (not re-exported)
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    class HeartbeatJournal(JournalStorage, BaseHeartbeat):
        def record_heartbeat(self, trial_id: int) -> None:
            try:
                self.set_trial_system_attr(trial_id, "heartbeat", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:  # failed by a worker that took us for dead
                pass

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            return [t._trial_id for t in running
                    if now - max(t.system_attrs.get("heartbeat", 0.0), t.datetime_start.timestamp())
                    > GRACE * heartbeat]

        def get_heartbeat_interval(self) -> int:
            return heartbeat

        def get_heartbeat_stale_trial_callback(self) -> Callable:
            return retry

    try:
        return HeartbeatJournal(JournalFileBackend(str(path)))
    except OSError as e:
        raise UserError(f"--storage {path}: cannot open the journal file ({e.strerror or e})") from None


def open_study(sweep: Sweep, storage: Any, say: Callable[[str], None] = lambda m: None) -> Any:
    """Create the study, queueing a grid's cells, or join it; a joining worker waits until the grid is queued."""
    optuna = _optuna()
    if sweep.grid:  # never asked: a grid trial's parameters come from the queue
        sampler = optuna.samplers.RandomSampler()
    else:  # constant_liar: workers asking at once are steered apart instead of getting the same point
        sampler = optuna.samplers.TPESampler(n_startup_trials=max(2, min(10, sweep.trials // 3)), constant_liar=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if sweep.prune \
        else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(study_name=sweep.name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=sampler, pruner=pruner)
    else:
        study.set_user_attr("metric", sweep.metric)
        study.set_user_attr("heartbeat", storage.get_heartbeat_interval())
        if sweep.grid:
            for cell in grid_cells(sweep.grid):
                study.enqueue_trial(cell)
            study.set_user_attr("queued", sweep.trials)
            say(f"study {sweep.name}: created, {sweep.trials} cells queued")
    beat = study.user_attrs.get("heartbeat")
    if beat is not None and beat != storage.get_heartbeat_interval():  # else one worker takes another for dead
        raise UserError(f"study {sweep.name}'s workers send a heartbeat every {beat} s: pass --heartbeat {beat}")
    t0 = time.monotonic()
    while sweep.grid and not study.user_attrs.get("queued"):
        if time.monotonic() - t0 > QUEUE_WAIT:
            raise UserError(f"study {sweep.name} exists but its grid was never queued (the worker that created it "
                            "died at that moment?); delete the study or use another --storage")
        time.sleep(0.5)
    return study


# ---------------------------------------------------------------- the worker

def work(sweep: Sweep, study: Any, cifar: Any, photos: Any = None, max_trials: int | None = None,
         poll: float = HEARTBEAT, say: Callable[[str], None] = lambda m: None) -> int:
    """Take trials until the study has nothing left for this worker (or `max_trials` are done). While
    other workers' trials are running it waits, failing any whose heartbeat stopped, so that their
    retries are taken here. Returns the number of trials this worker ran."""
    optuna = _optuna()
    from optuna.trial import TrialState

    current: list[Any] = []
    objective = _objective(sweep, cifar, photos, current, say)
    done = 0
    while max_trials is None or done < max_trials:
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed here, its retry queued
        step = _next_step(sweep, study.get_trials(deepcopy=False))
        if step == "done":
            break
        if step == "wait":
            time.sleep(poll)
            continue
        current.clear()
        try:
            study.optimize(objective, n_trials=1, catch=(UserError,))
        except ValueError as e:
            # failed by a worker that missed our heartbeats (a busy machine): Optuna's tell of the result,
            # or of the UpdateFinishedTrialError an epoch's report raised, finds the trial failed already
            trial = _stored(study, current)
            taken = trial is not None and trial.state == TrialState.FAIL
            if not (taken and str(e).startswith("Cannot tell a FAIL trial")):
                raise
            say(f"trial {current[0].number}: taken for dead by another worker (no heartbeat "
                f"for {GRACE} beats) and retried there; this worker goes on")
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: queue this trial again (its run resumes), then stop
            trial = _stored(study, current)
            if trial is not None and trial.state == TrialState.FAIL and "queue_empty" not in trial.user_attrs:
                optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, trial)
                say(f"trial {trial.number}: queued again; a worker that takes it resumes its run directory")
            raise
        done += 1
    return done


def _stored(study: Any, current: list[Any]) -> Any:
    """This worker's current trial as the storage has it now (another worker may have failed it), or None."""
    return next((t for t in study.get_trials(deepcopy=False) if t.number == current[0].number), None) \
        if current else None


def _next_step(sweep: Sweep, trials: list[Any]) -> str:
    """'run' while a trial is queued (or, for a search, budget is left), 'wait' while only other workers'
    trials run (they may die and come back as retries), else 'done'."""
    from optuna.trial import TrialState

    states = [t.state for t in trials]
    if TrialState.WAITING in states:
        return "run"
    if sweep.space is not None:
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        if sum(t.number not in retried for t in trials) < sweep.trials:
            return "run"
    return "wait" if TrialState.RUNNING in states else "done"


def _objective(sweep: Sweep, cifar: Any, photos: Any, current: list[Any], say: Callable[[str], None]) -> Callable:
    optuna = _optuna()

    def objective(trial: Any) -> float:
        current.append(trial)
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        if sweep.grid and not frozen.system_attrs.get("fixed_params"):
            # asked at the moment another worker took the last queued cell: nothing to do
            trial.set_user_attr("queue_empty", True)
            raise UserError("the queue was empty (another worker took the last cell)")
        params = {k: trial.suggest_categorical(k, v) for k, v in sweep.grid.items()} if sweep.grid \
            else {k: d.suggest(trial, k) for k, d in sweep.space.items()}
        run_dir, cfg = sweep.make(params)
        if sweep.device:
            cfg.device = sweep.device
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"pid {os.getpid()} on {socket.gethostname()}")
        retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        what = f"trial {trial.number}: {_describe(params)}"
        say(f"{what} -> {run_dir}" + (f" (retry of trial {retry_of}, whose worker stopped)" if retry_of is not None
                                       else ""))
        t0 = time.perf_counter()
        try:
            metrics = _train(run_dir, cfg, cifar, _Reporter(trial, optuna), say, what)
            value = metrics["val_accuracy"]
            if sweep.objective == "testset":
                value = _photo_accuracy(run_dir, photos, sweep.metric.removesuffix("_accuracy"))
        except UserError as e:
            trial.set_user_attr("error", str(e))
            say(f"{what}: failed: {e}")
            raise
        except optuna.TrialPruned:
            say(f"{what}: pruned after epoch {len(_history_rows(run_dir))}")
            raise
        for key in ("val_accuracy", "best_val_accuracy", "train_seconds", "epochs"):
            trial.set_user_attr(key, metrics.get(key))
        say(f"{what}: {sweep.metric} {value:.4f} ({time.perf_counter() - t0:.0f} s)")
        return value

    return objective


class _Reporter:
    """The training callback: each epoch's validation accuracy to Optuna, which may prune the trial. It
    raises after the epoch is written, so a pruned run is a consistent, resumable run directory."""

    def __init__(self, trial: Any, optuna: Any):
        self.trial, self.optuna = trial, optuna
        self.epochs = 0

    def on_train_start(self, cfg: Config, run_dir: Path, state: dict[str, Any]) -> None:
        self.epochs = cfg.epochs

    def on_epoch_end(self, row: dict[str, Any], state: dict[str, Any], model: Any) -> None:
        self.trial.report(row["val_acc"], row["epoch"])
        # never after the last epoch: that run is finished, and a finished run is a complete trial
        if row["epoch"] < self.epochs and self.trial.should_prune():
            raise self.optuna.TrialPruned(f"epoch {row['epoch']}: val_accuracy {row['val_acc']:.4f}")


def _train(run_dir: Path, cfg: Config, cifar: Any, reporter: _Reporter, say: Callable[[str], None],
           what: str) -> dict[str, Any]:
    """fit() into run_dir: new, resumed from its last epoch, or (finished) only read back. If another worker
    holds the run lock (it was taken for dead while alive), wait for it to finish or die."""
    from cifarlab.loggers import loggers_for
    from cifarlab.train import fit
    from cifarlab.train.runctl import RunInUse

    rd = RunDir(run_dir)
    waited = False
    while True:
        if rd.config.is_file():
            _same_settings(rd, cfg)
        try:
            return fit(cfg, cifar, run_dir, resume=rd.config.is_file(), quiet=True,
                       callbacks=[reporter, *loggers_for(cfg, cifar)])  # `log: tensorboard` in a SPEC's set
        except RunInUse:
            if not waited:
                say(f"{what}: {run_dir} is being trained by another worker; waiting for it")
                waited = True
            time.sleep(2.0)


def _same_settings(rd: RunDir, cfg: Config) -> None:
    ran, planned = rd.load_config().to_dict(), cfg.to_dict()
    changed = [k for k in planned if k not in ("data", "device", "weights", "description", "log")
               and ran.get(k) != planned[k]]
    if changed:
        raise UserError(f"{rd.path} was trained with other settings ({', '.join(changed)}) than this sweep asks "
                        "for; delete it or use another SWEEP_DIR (--out)")


def _photo_accuracy(run_dir: Path, photos: Any, name: str) -> float:
    from cifarlab.evaluate.testset import evaluate_testset

    rd = RunDir(run_dir)
    if rd.is_stale(rd.eval_json(name)):
        return evaluate_testset(run_dir, photos, name)["accuracy"]
    return json.loads(rd.eval_json(name).read_text())["accuracy"]


def _history_rows(run_dir: Path) -> list[str]:
    try:
        return RunDir(run_dir).history.read_text().splitlines()[1:]
    except OSError:
        return []


def load_inputs(sweep: Sweep, data: str | None, quiet: bool) -> tuple[Any, Any]:
    """CIFAR-10 and, for a photo objective, the photo set: loaded once per worker, before any trial."""
    from cifarlab.data import load_cifar10
    from cifarlab.data.testset import load_testset

    photos = load_testset(sweep.testset, filtered=sweep.filtered) if sweep.objective == "testset" else None
    return load_cifar10(data or sweep.data, progress=not quiet), photos


def train_as_study(prefix: str, runs: list[tuple[Path, Config]], storage: Any, out: Path, cifar: Any,
                   say: Callable[[str], None] = lambda m: None) -> None:
    """`reproduce --storage`: train (run directory, config) pairs as a grid over one parameter, `run` (the
    directory's name), working until every run is done (other workers may take some); one line if any failed."""
    by_name = {Path(d).name: (Path(d), c) for d, c in runs}
    what = [[name, {k: v for k, v in c.to_dict().items() if k not in ("data", "device", "weights")}]
            for name, (_, c) in by_name.items()]
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]
    sweep = Sweep(name=f"{prefix}-{digest}", out=Path(out), make=lambda p: by_name[p["run"]],
                  grid={"run": list(by_name)}, trials=len(by_name))
    study = open_study(sweep, storage, say)
    say(f"study {sweep.name}: {len(by_name)} runs; this process (pid {os.getpid()}) trains as one worker")
    work(sweep, study, cifar, say=say)
    errors: dict[str, str] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.params.get("run")
        if t.state.name == "COMPLETE":
            errors[name] = ""
        elif name and errors.get(name) != "":
            errors[name] = t.user_attrs.get("error", errors.get(name) or t.state.name.lower())
    failed = [f"{n} ({errors.get(n) or 'not run'})" for n in by_name if errors.get(n) != ""]
    if failed:
        raise UserError(f"{len(failed)} run(s) of study {sweep.name} did not finish: {'; '.join(failed)}")


# ---------------------------------------------------------------- the summary

def summary(sweep: Sweep, study: Any, top: int = 5) -> tuple[str, list[dict[str, Any]], list[Path]]:
    """The best trials, a mean ± std table per grid cell (pooled over `seed`), and Optuna's optimisation
    history and parameter importance plots. Returns (text, rows, files written); writes
    SWEEP_DIR/summary.md, summary.csv and the PNGs."""
    from optuna.trial import TrialState

    from cifarlab.evaluate.compare import mean_std
    from cifarlab.io import write_csv, write_text

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    retried = sum(1 for t in trials if t.system_attrs.get("failed_trial") is not None)
    lines = [f"sweep {sweep.name}: {len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
             + f" ({retried} retries of trials whose worker stopped)"]
    best = sorted(complete, key=lambda t: -t.value)[:top]
    lines += [f"", f"best trials ({sweep.metric}):"]
    lines += [f"  {t.value:.4f}  trial {t.number}: {_describe(t.params)}  {t.user_attrs.get('run_dir', '')}"
              for t in best] or ["  none complete yet"]
    rows = cell_rows(complete)
    if sweep.grid:
        done = {run_name(t.params) for t in complete}
        missing = [c for c in grid_cells(sweep.grid) if run_name(c) not in done]
        lines += ["", f"per grid cell, pooled over seed ({sweep.metric}, %):", "",
                  "| cell | runs | mean ± std | min | max |", "|---|---|---|---|---|"]
        lines += [f"| {r['cell']} | {r['runs']} | {mean_std(100 * r['mean'], _pct(r['std']), 2)} | "
                  f"{100 * r['min']:.2f} | {100 * r['max']:.2f} |" for r in rows]
        if missing:
            lines += ["", f"not done ({len(missing)}): " + ", ".join(_describe(c) for c in missing)]
    sweep.out.mkdir(parents=True, exist_ok=True)
    written = [sweep.out / "summary.md", sweep.out / "summary.csv"]
    write_csv(written[1], rows, ["cell", "runs", "mean", "std", "min", "max", "run_dirs"])
    notes, pngs = plots(study, sweep.out)
    written += pngs
    lines += [""] + notes
    text = "\n".join(lines)
    write_text(written[0], text + "\n")
    return text, rows, written


def _pct(std: float | None) -> float | None:
    return None if std is None else 100 * std


def cell_rows(complete: list[Any]) -> list[dict[str, Any]]:
    """One row per parameter combination without `seed`: runs, mean, std (None for one run), min, max."""
    groups: dict[str, list[Any]] = {}
    for t in complete:
        cell = {k: v for k, v in t.params.items() if k != "seed"}
        groups.setdefault(_describe(cell) if cell else "(all seeds)", []).append(t)
    rows = []
    for cell, ts in sorted(groups.items()):
        values = [t.value for t in ts]
        rows.append({"cell": cell, "runs": len(values), "mean": statistics.mean(values),
                     "std": statistics.stdev(values) if len(values) > 1 else None, "min": min(values),
                     "max": max(values), "run_dirs": " ".join(t.user_attrs.get("run_dir", "") for t in ts)})
    return rows


def plots(study: Any, out: Path) -> tuple[list[str], list[Path]]:
    """Optuna's optimisation history and parameter importances (PED-ANOVA: numpy only, where the default
    fANOVA would need scikit-learn) as PNGs; a note instead of a plot where there is too little to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    from cifarlab.pictures import save_png

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    # PED-ANOVA compares the top quantile of trials with all: at least ~3 trials on top, or one lucky trial
    # decides (Optuna's 10 % suits studies of 30 and more)
    top = min(0.5, max(0.1, 3 / max(len(complete), 1)))
    notes, written = [], []
    jobs = {"optimization_history": lambda: ovm.plot_optimization_history(study),
            "param_importances": lambda: ovm.plot_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator(target_quantile=top))}
    varied = [k for k in {k for t in complete for k in t.params}
              if len({json.dumps(t.params.get(k), default=str) for t in complete}) > 1]
    for name, draw in jobs.items():
        if not complete or (name == "param_importances" and len(varied) < 2):
            notes.append(f"{name}: not drawn (needs " + ("complete trials)" if not complete else
                                                         "two or more parameters that vary)"))
            (out / f"{name}.png").unlink(missing_ok=True)  # an earlier state's plot would mislead
            continue
        try:
            ax = draw()
        except (ValueError, RuntimeError) as e:  # e.g. importances of a single value
            notes.append(f"{name}: not drawn ({' '.join(str(e).split())[:200]})")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        written.append(save_png(fig, out / f"{name}.png"))
        plt.close(fig)
        if name == "param_importances":
            notes.append(f"param_importances: PED-ANOVA, what it takes to be in the top {top:.0%} of "
                         f"{len(complete)} complete trials")
    return notes, written


# ---------------------------------------------------------------- the command

def run_sweep(spec: str | Path, storage: str | None = None, out: str | Path | None = None, worker: bool = False,
              trials: int | None = None, show_summary: bool = False, heartbeat: int = HEARTBEAT,
              data: str | None = None, device: str | None = None, quiet: bool = False) -> str | None:
    """`cifarlab sweep`: check the spec and the storage, then work (and, unless a worker, summarise);
    with show_summary only summarise. Returns the summary's text (None for a worker)."""
    say = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if trials is not None and trials < 1:
        raise UserError(f"--trials must be positive, got {trials}")
    sweep = load_spec(spec, out)
    sweep.device = device
    if show_summary and not is_database(storage) and not Path(storage or sweep.out / "journal.log").is_file():
        raise UserError(f"no sweep at {storage or sweep.out / 'journal.log'} (run the sweep first, or pass --storage)")
    store = open_storage(storage, sweep.out, heartbeat)
    where = safe_url(storage) if is_database(storage) else str(storage or sweep.out / "journal.log")
    if show_summary:
        return summary(sweep, _load_study(sweep, store), )[0]
    if device:
        from cifarlab.device import select_device

        select_device(device)  # an unavailable device fails before data loading
    cifar, photos = load_inputs(sweep, data, quiet)  # bad data fails before this worker joins
    study = open_study(sweep, store, say)
    say(f"study {sweep.name} ({where}): worker pid {os.getpid()} on {socket.gethostname()} joins; runs in "
        f"{sweep.out / 'runs'}")
    n = work(sweep, study, cifar, photos, trials, poll=heartbeat, say=say)
    say(f"worker pid {os.getpid()}: {n} trial(s) run here; " + ("--trials reached" if trials and n >= trials
                                                                   else "nothing left to run"))
    if worker:
        return None
    text, _, written = summary(sweep, study)
    return text + "\nwrote " + ", ".join(str(p) for p in written)


def _load_study(sweep: Sweep, storage: Any) -> Any:
    optuna = _optuna()
    try:
        return optuna.load_study(study_name=sweep.name, storage=storage)
    except KeyError:
        raise UserError(f"no study {sweep.name} in this storage (has the sweep started? was the spec edited "
                        "since? its name comes from the spec's contents)") from None
