"""`cifarlab sweep` on Optuna: a bad spec or storage is one line before any training; three worker
processes share a grid on a journal file and on a throw-away PostgreSQL cluster, one of them killed with
kill -9 mid-trial, and the study still ends with every cell done exactly once, pooled correctly, and
every run directory whole; a pruned trial leaves a run directory that resumes."""

import csv
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cifarlab.cli import main
from cifarlab.rundir import RunDir
from cifarlab.sweep import load_spec, open_storage, run_name
from testdata import quick_cfg, require, require_module, toy_data, write_real_tree

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sweeps"
GRID = {"seed": [0, 1, 2], "lr": [0.2, 0.4]}  # 6 cells: 3 seeds pooled per lr
HEARTBEAT = 2  # seconds; a trial silent for 3 beats is retried


@pytest.fixture
def optuna():
    return require_module("optuna", "the sweep extra is not installed: pip install 'cifarlab[sweep]'")


def write_spec(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

@pytest.mark.parametrize("body, expected", [
    ("preset: fast\nspace:\n  lrr: [0.1, 0.5]\n", "unknown config key 'lrr'; did you mean 'lr'?"),
    ("preset: fast\ngrid:\n  augment.rotaton: [0, 10]\n", "unknown config key 'augment.rotaton'"),
    ("preset: fast\ngrid:\n  lr: [0.1, -1]\n", "'lr' must be positive"),
    ("preset: fast\ngrid: {seed: [0]}\nspace: {lr: [0.1, 0.5]}\n", "either 'grid'"),
    ("preset: fast\ngrd: {seed: [0]}\n", "did you mean 'grid'?"),
    ("preset: fast\ngrid: {seed: [0]\n", "not valid YAML"),
    ("preset: fastt\ngrid: {seed: [0]}\n", "unknown preset 'fastt'"),
    ("preset: fast\nspace: {lr: {log: [0, 1]}}\n", "low > 0 for log"),
    ("preset: fast\nobjective: testset\ngrid: {seed: [0]}\n", "'testset: DIR'"),
])
def test_a_bad_spec_is_one_line_before_anything_is_written(tmp_path, capsys, body, expected):
    spec = write_spec(tmp_path / "s.yaml", body)
    err = one_line_error(capsys, ["sweep", str(spec), "--out", str(tmp_path / "sw")])
    assert expected in err and str(spec) in err
    assert not (tmp_path / "sw").exists()  # no journal, no runs


def test_an_unreachable_database_is_one_line_in_seconds(optuna, tmp_path, capsys):
    require_module("psycopg", "the PostgreSQL driver is not installed: pip install 'cifarlab[sweep]'")
    spec = write_spec(tmp_path / "s.yaml", "preset: fast\ngrid: {seed: [0]}\n")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    err = one_line_error(capsys, ["sweep", str(spec), "--storage", f"postgresql://u:secret@127.0.0.1:{port}/db",
                                  "--out", str(tmp_path / "sw")])
    assert time.perf_counter() - t0 < 30
    assert "cannot use the database" in err and "secret" not in err  # the password is not printed
    assert not (tmp_path / "sw").exists()


def test_a_missing_extra_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    spec = write_spec(tmp_path / "s.yaml", "preset: fast\ngrid: {seed: [0]}\n")
    err = one_line_error(capsys, ["sweep", str(spec), "--out", str(tmp_path / "sw")])
    assert "pip install 'cifarlab[sweep]'" in err


def test_a_summary_of_no_sweep_is_one_line(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", "preset: fast\ngrid: {seed: [0]}\n")
    err = one_line_error(capsys, ["sweep", str(spec), "--out", str(tmp_path / "sw"), "--summary"])
    assert "no sweep at" in err and not (tmp_path / "sw").exists()


def test_the_shipped_examples_are_valid_and_name_runs_by_their_parameters():
    seeds, lr = load_spec(EXAMPLES / "seeds.yaml"), load_spec(EXAMPLES / "lr.yaml")
    assert seeds.grid == {"seed": [0, 1, 2]} and seeds.trials == 3 and seeds.metric == "val_accuracy"
    run, cfg = seeds.make({"seed": 2})
    assert run.name == "seed=2" and cfg.preset == "fast" and cfg.train_subset == 2000 and cfg.epochs == 2
    assert cfg.seed == 2
    assert lr.space["lr"].log and lr.prune and lr.trials == 8
    assert run_name({"lr": 0.1, "seed": 0}) == run_name({"seed": 0, "lr": 0.1}) == "lr=0.1_seed=0"
    assert run_name({"lr": 0.1234567891}) != run_name({"lr": 0.1234567892})  # exact floats: never one directory


# ---------------------------------------------------------------- pruning leaves a run that resumes

def test_a_pruned_trial_stops_after_a_written_epoch_and_its_run_resumes(optuna, tmp_path):
    from cifarlab.sweep import _Reporter
    from cifarlab.train import fit

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for _ in range(2):  # two earlier trials better after one epoch than any accuracy can be
        t = study.ask()
        t.report(1.5, 1)
        study.tell(t, 1.5)
    trial = study.ask()
    cfg, run = quick_cfg("fast", "seed=1", epochs=3), tmp_path / "run"
    with pytest.raises(optuna.TrialPruned):
        fit(cfg, toy_data(), run, quiet=True, callbacks=[_Reporter(trial, optuna)])
    rd = RunDir(run)
    assert not rd.is_finished() and len(rd.history.read_text().splitlines()) == 2  # header + epoch 1
    assert json.loads(rd.metrics.read_text())["epochs"] == 1 and not rd.lock.exists()
    metrics = fit(cfg, toy_data(), run, resume=True, quiet=True)  # what a retry (or `train --resume`) does
    assert metrics["finished"] and metrics["epochs"] == 3


def test_a_search_runs_its_budget_and_summarises_it(optuna, tmp_path):
    from cifarlab.sweep import open_study, summary, work

    spec = write_spec(tmp_path / "lr.yaml", "preset: fast\nepochs: 2\nset: {batch_size: 32, eval_batch_size: 100}\n"
                      "trials: 4\nspace:\n  lr: {log: [0.05, 0.5]}\n  label_smoothing: [0.0, 0.3]\n")
    sweep = load_spec(spec, tmp_path / "sw")
    study = open_study(sweep, open_storage(None, sweep.out, 1))
    assert work(sweep, study, toy_data(), poll=1) == 4
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    for t in trials:
        rd = RunDir(sweep.out / "runs" / run_name(t.params))
        assert t.user_attrs["run_dir"] == str(rd.path)
        assert rd.is_finished() == (t.state.name == "COMPLETE")  # a pruned run is consistent, not finished
        assert len(rd.history.read_text().splitlines()) - 1 == max(t.intermediate_values)
    text, rows, written = summary(sweep, study)
    best = max(t.value for t in trials if t.state.name == "COMPLETE")  # a pruned trial's value is its last epoch's
    assert f"{best:.4f}" in text.split("best trials")[1].splitlines()[1]
    assert {p.name for p in written} >= {"summary.md", "summary.csv", "optimization_history.png",
                                          "param_importances.png"}


def test_a_photo_set_can_be_the_objective(optuna, tiny_tree, tmp_path):
    from cifarlab.data.testset import load_testset
    from cifarlab.sweep import open_study, work

    photos = tiny_tree / "test"  # DIR/<class>/<photo>
    spec = write_spec(tmp_path / "s.yaml", f"preset: fast\nepochs: 1\nset: {{batch_size: 32}}\nobjective: testset\n"
                      f"testset: {photos}\ngrid: {{seed: [0]}}\n")
    sweep = load_spec(spec, tmp_path / "sw")
    study = open_study(sweep, open_storage(None, sweep.out, 1))
    assert sweep.metric == "test_accuracy" and work(sweep, study, toy_data(), load_testset(photos), poll=1) == 1
    (trial,) = study.get_trials()
    report = json.loads(RunDir(sweep.out / "runs" / "seed=0").eval_json("test").read_text())
    assert trial.value == report["accuracy"] and report["n"] == 30


def test_ctrl_c_in_a_trial_queues_it_again(optuna, tmp_path, monkeypatch):
    import cifarlab.sweep as sw
    from cifarlab.train.runctl import Interrupted

    def interrupted(*args, **kwargs):
        raise Interrupted("interrupted at epoch 1")

    spec = write_spec(tmp_path / "s.yaml", "preset: fast\ngrid: {seed: [0, 1]}\n")
    sweep = load_spec(spec, tmp_path / "sw")
    study = sw.open_study(sweep, open_storage(None, sweep.out, 1))
    monkeypatch.setattr(sw, "_train", interrupted)  # what fit raises on Ctrl-C or SIGTERM
    with pytest.raises(KeyboardInterrupt):
        sw.work(sweep, study, None, poll=1)
    failed, *others = sorted(study.get_trials(), key=lambda t: t.state.name)
    assert failed.state.name == "FAIL" and [t.state.name for t in others] == ["WAITING", "WAITING"]
    retry = next(t for t in others if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
                 == failed.number)
    assert retry.params == failed.params


def test_a_worker_taken_for_dead_while_alive_goes_on(optuna, tmp_path, monkeypatch):
    """On a busy machine another worker may miss this one's heartbeats and fail its trial mid-run (CI saw
    it: "Cannot tell a FAIL trial" stopped a live worker). The worker says so and takes the next trial;
    the retry is one of them. A real error in training still stops it."""
    import cifarlab.sweep as sw

    spec = write_spec(tmp_path / "s.yaml", "preset: fast\ngrid: {seed: [0]}\n")
    sweep = load_spec(spec, tmp_path / "sw")
    study = sw.open_study(sweep, open_storage(None, sweep.out, 1))
    calls = []

    def train(run_dir, cfg, cifar, reporter, say, what):  # the first call is failed by "another worker"
        calls.append(run_dir.name)
        if len(calls) == 1:
            frozen = next(t for t in study.get_trials() if t.number == reporter.trial.number)
            study._storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL)
            study._storage.get_heartbeat_stale_trial_callback()(study, frozen)  # what fail_stale_trials does
        return {"val_accuracy": 0.5}

    monkeypatch.setattr(sw, "_train", train)
    said = []
    assert sw.work(sweep, study, None, poll=1, say=said.append) == 2
    assert calls == ["seed=0", "seed=0"] and any("taken for dead by another worker" in m for m in said), said
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "COMPLETE"]

    def broken(*args, **kwargs):
        raise ValueError("a bug in training")

    monkeypatch.setattr(sw, "_train", broken)
    study = sw.open_study(load_spec(spec, tmp_path / "sw2"), open_storage(None, tmp_path / "sw2", 1))
    with pytest.raises(ValueError, match="a bug in training"):
        sw.work(load_spec(spec, tmp_path / "sw2"), study, None, poll=1)


def test_workers_must_agree_on_the_heartbeat(optuna, tmp_path):
    from cifarlab.errors import UserError
    from cifarlab.sweep import open_study

    spec = write_spec(tmp_path / "s.yaml", "preset: fast\ngrid: {seed: [0, 1]}\n")
    sweep = load_spec(spec, tmp_path / "sw")
    study = open_study(sweep, open_storage(None, sweep.out, 5))
    assert [t.state.name for t in study.get_trials()] == ["WAITING", "WAITING"]  # the grid, queued once
    open_study(sweep, open_storage(None, sweep.out, 5))  # a second worker joins: nothing queued again
    assert len(study.get_trials()) == 2
    with pytest.raises(UserError, match="--heartbeat 5"):  # a shorter grace would take live workers for dead
        open_study(sweep, open_storage(None, sweep.out, 1))


# ---------------------------------------------------------------- three workers, one killed, on both storages

@pytest.fixture(scope="module")
def real_tree(real_cifar, tmp_path_factory):
    """A small real CIFAR-10 tree: 1,000 training and 500 validation images, class-balanced."""
    return write_real_tree(real_cifar, tmp_path_factory.mktemp("real") / "cifar", n_train=100, n_val=50)


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL cluster on a free localhost port (data and socket in a temp folder), as the
    `postgres` user when we are root (PostgreSQL refuses to run as root); stopped and deleted afterwards."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    require(bins, "PostgreSQL is not installed (scripts/test.sh installs Debian's postgresql where it can)")
    require_module("psycopg", "the PostgreSQL driver is not installed: pip install 'cifarlab[sweep]'")
    bindir = bins[-1].parent
    root = Path(tempfile.mkdtemp(prefix="cifarlab-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        require(shutil.which("runuser"), "running as root without runuser: cannot start PostgreSQL as 'postgres'")
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    r = run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    assert r.returncode == 0, r.stderr
    r = run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
            f"-p {port} -k {root} -c listen_addresses=localhost", "start")
    assert r.returncode == 0, r.stderr + (root / "log").read_text()
    yield f"postgresql://postgres@localhost:{port}/postgres"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    shutil.rmtree(root, ignore_errors=True)


def _worker(spec: Path, out: Path, storage: str, data: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cifarlab", "sweep", str(spec), "--out", str(out), "--data", str(data),
           "--storage", storage, "--heartbeat", str(HEARTBEAT), "--worker"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _kill_mid_trial(victim: subprocess.Popen, runs: Path, timeout: float = 240) -> Path:
    """kill -9 the victim once it is in a run's second epoch (the first written, the run not finished)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and victim.poll() is None:
        for run in runs.glob("*") if runs.is_dir() else []:
            rd = RunDir(run)
            try:
                mine = rd.lock.read_text().startswith(f"pid {victim.pid} ")
                epochs = len(rd.history.read_text().splitlines()) - 1
            except OSError:
                continue
            if mine and epochs == 1 and not rd.is_finished():
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                return run
        time.sleep(0.05)
    pytest.fail("the victim worker was never caught mid-trial")


def _three_workers_one_killed(optuna, tmp_path: Path, storage: str, data: Path, capsys) -> None:
    spec = write_spec(tmp_path / "grid.yaml", "preset: fast\nepochs: 2\nset: {eval_batch_size: 250}\n"
                      f"objective: val_accuracy\ngrid:\n  seed: {GRID['seed']}\n  lr: {GRID['lr']}\n")
    out = tmp_path / "sweep"
    workers = [_worker(spec, out, storage, data) for _ in range(3)]
    logs = []
    try:
        killed = _kill_mid_trial(workers[0], out / "runs")
        for w in workers[1:]:
            logs.append(w.communicate(timeout=420)[1])
            assert w.returncode == 0, logs[-1][-3000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert f"{killed} (retry of trial" in "".join(logs), "".join(logs)  # a survivor took the dead worker's cell

    # every cell done exactly once; the killed trial failed and its retry resumed the same directory
    sweep = load_spec(spec, out)
    study = optuna.load_study(study_name=sweep.name, storage=open_storage(storage, out, HEARTBEAT))
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    why = f"killed pid {workers[0].pid} in {killed.name}; trials:\n" + "\n".join(  # what went wrong, if anything
        f"  {t.number} {t.state.name} {t.params} {t.user_attrs.get('worker')} retry of "
        f"{t.system_attrs.get('failed_trial')} {t.user_attrs.get('error', '')}" for t in trials) + "\n" + "".join(logs)
    cells = sorted(run_name(t.params) for t in complete)
    assert cells == sorted(run_name({"seed": s, "lr": lr}) for s in GRID["seed"] for lr in GRID["lr"]), why
    dead = [t for t in trials if t.user_attrs.get("worker", "").startswith(f"pid {workers[0].pid} ")
            and t.state == optuna.trial.TrialState.FAIL]
    assert [Path(t.user_attrs["run_dir"]).name for t in dead] == [killed.name], why
    retry = next(t for t in complete if run_name(t.params) == killed.name)
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == dead[0].number, why
    assert "resuming" in RunDir(killed).log.read_text(), why  # epoch 1 was kept, not trained again

    # no run directory is corrupt: finished, one history row per epoch, loadable, nothing half-written
    for run in (out / "runs").iterdir():
        rd = RunDir(run)
        assert rd.is_finished(), run
        assert [ln.split(",")[0] for ln in rd.history.read_text().splitlines()[1:]] == ["1", "2"], run
        rd.load_model()
        assert not list(run.glob(".*.part")) and not rd.lock.exists(), run

    # the summary pools each lr over the seeds, exactly as the run directories say
    capsys.readouterr()
    assert main(["sweep", str(spec), "--out", str(out), "--storage", storage, "--summary"]) == 0
    printed = capsys.readouterr().out
    assert "6 complete" in printed and (out / "optimization_history.png").is_file()
    rows = {r["cell"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    for lr in GRID["lr"]:
        accs = [json.loads(RunDir(out / "runs" / run_name({"seed": s, "lr": lr})).metrics.read_text())["val_accuracy"]
                for s in GRID["seed"]]
        row = rows[f"lr={lr}"]
        assert int(row["runs"]) == 3
        assert float(row["mean"]) == pytest.approx(statistics.mean(accs), abs=1e-9)
        assert float(row["std"]) == pytest.approx(statistics.stdev(accs), abs=1e-9)
        assert f"{100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f}" in printed


@pytest.mark.slow
def test_three_workers_on_a_journal_file_one_killed(optuna, real_tree, tmp_path, capsys):
    _three_workers_one_killed(optuna, tmp_path, str(tmp_path / "journal.log"), real_tree, capsys)


@pytest.mark.slow
def test_three_workers_on_postgresql_one_killed(optuna, real_tree, postgres, tmp_path, capsys):
    _three_workers_one_killed(optuna, tmp_path, postgres, real_tree, capsys)


# ---------------------------------------------------------------- reproduce --seeds K --storage

def test_reproduce_trains_its_seed_grid_as_a_study(optuna, tiny_tree, tmp_path):
    from cifarlab.reproduce import reproduce

    tiny = {r: ["epochs=1"] for r in ("base", "imp1", "imp2")}
    mnet = ["alpha=0.25", "input_size=32", "weights=null", "epochs=1", "batch_size=16"]
    tiny |= {r: mnet for r in ("mnet1", "mnet2")}
    out, journal = tmp_path / "out", tmp_path / "out" / "journal.log"
    out.mkdir()
    assert reproduce(str(tiny_tree), None, out, profile="study", seeds=2, overrides=tiny, quiet=True,
                     storage=str(journal), worker=True) is None  # a worker trains, nothing else
    runs = sorted((out / "runs" / "study").iterdir())
    assert len(runs) == 10 and all(RunDir(r).is_finished() for r in runs)
    storage = open_storage(str(journal), out)
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t.params["run"] for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(done) == [r.name for r in runs]
