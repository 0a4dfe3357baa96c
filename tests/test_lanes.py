"""Several runs at once: lane assignment, view-cache chains, and real runs trained in two lanes."""

import pytest

from cifarlab.config import load_config, resolve_config
from cifarlab.errors import UserError
from cifarlab.lanes import assign, train_in_lanes, view_chains


def test_longest_chains_first_each_to_the_least_loaded_lane():
    costs = [10, 50, 20, 20, 5]
    lanes = assign([[0], [1], [2, 3], [4]], costs, 2)
    assert lanes == [[1, 4], [2, 3, 0]]  # 50 | 40; then 10 to the lighter lane (50 | 50), 5 to the first
    assert assign([[0], [1]], [1, 1], 4) == [[0], [1]]  # no empty lanes


def test_mobilenets_sharing_views_form_one_chain_in_plan_order():
    mnet = ["weights=null", "aug_views=2"]
    cfgs = [resolve_config("imp2"), resolve_config("mnet1", mnet), resolve_config("mnet2", mnet),
            resolve_config("mnet1", mnet + ["seed=1"]), resolve_config("mnet1", ["weights=null"])]
    assert sorted(view_chains(cfgs)) == [[0], [1, 2], [3], [4]]


def test_two_lanes_train_every_run_to_the_end(tiny_tree, tmp_path):
    runs = [(tmp_path / f"r{i}", resolve_config("imp1", ["epochs=2", "batch_size=16", f"seed={i}"])) for i in range(3)]
    said = []
    train_in_lanes(runs, [1, 1, 1], str(tiny_tree), 2, said.append, every=0.5)
    for run_dir, cfg in runs:
        assert load_config(run_dir / "config.yaml") == cfg
        assert len((run_dir / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    assert "2 lanes" in said[0] and sum("finished" in s for s in said) == 3


def test_a_failing_run_stops_the_lanes_with_its_one_line_error(tiny_tree, tmp_path):
    bad = resolve_config("imp1", ["epochs=1"])
    bad.data = str(tmp_path / "missing")
    runs = [(tmp_path / "bad", bad)]
    with pytest.raises(UserError, match="^bad: error: .*missing"):
        train_in_lanes(runs, [1], None, 2, lambda s: None)


@pytest.mark.parametrize("how", ["ctrl-c", "kill -INT", "kill -TERM"])
def test_ctrl_c_stops_every_lane_and_the_same_call_resumes(tiny_tree, tmp_path, how):
    """Ctrl-C in a terminal signals the whole process group; `kill` or a scheduler signals only the study's
    process: either way every lane stops at a batch boundary and the parent says so in one line."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from cifarlab.config import resolve_config
        from cifarlab.lanes import train_in_lanes
        from cifarlab.train.runctl import Interrupted
        runs = [(Path({str(tmp_path)!r}) / f"r{{i}}", resolve_config("imp1", ["epochs=15", "batch_size=8", f"seed={{i}}"]))
                for i in range(2)]
        try:
            train_in_lanes(runs, [1, 1], {str(tiny_tree)!r}, 2, print)
        except Interrupted as e:
            print(e, file=sys.stderr)
            sys.exit(130)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.time() + 120
    while not all((tmp_path / f"r{i}" / "history.csv").is_file() for i in range(2)) and time.time() < deadline:
        time.sleep(0.2)
    if how == "ctrl-c":
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    else:
        os.kill(p.pid, signal.SIGINT if how == "kill -INT" else signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "run the same command again to resume" in err
    done = [len((tmp_path / f"r{i}" / "history.csv").read_text().splitlines()) - 1 for i in range(2)]
    assert all(0 < d < 15 for d in done)  # both stopped part-way, each with its finished epochs kept
    runs = [(tmp_path / f"r{i}", resolve_config("imp1", ["epochs=15", "batch_size=8", f"seed={i}"])) for i in range(2)]
    train_in_lanes(runs, [1, 1], str(tiny_tree), 2, lambda s: None)
    assert all(len((tmp_path / f"r{i}" / "history.csv").read_text().splitlines()) == 16 for i in range(2))


def _epochs(run_dir, seconds, now, age=0.0):
    """A run directory whose history.csv holds epochs that took `seconds` each, written `age` s before now."""
    import os

    run_dir.mkdir(exist_ok=True)
    path = run_dir / "history.csv"
    path.write_text("epoch,val_acc,seconds\n" + "".join(f"{e + 1},0.5,{s}\n" for e, s in enumerate(seconds)))
    os.utime(path, (now - age, now - age))


def test_eta_scales_the_work_left_by_each_lanes_measured_pace_and_counts_down_between_epochs(tmp_path):
    import time

    from cifarlab.lanes import eta_seconds

    runs = [(tmp_path / f"r{i}", resolve_config("imp1", ["epochs=4"])) for i in range(3)]
    parts = [(0, 100, 0)] * 3  # 25 s an epoch
    now = time.time()
    _epochs(runs[1][0], [50, 50], now)  # r1: 2 epochs at twice their estimate: lane 1's pace is 2
    started = {1: now - 100}
    # lane 1: r1's third epoch (50 s at that pace) and fourth (50), then r2 (200); lane 0: r0 as estimated
    assert eta_seconds([[0], [1, 2]], runs, parts, set(), now, started, {}) == pytest.approx(300)
    _epochs(runs[1][0], [50, 50], now, age=20)  # 20 s into r1's third epoch: 20 s less, not a jump at its end
    assert eta_seconds([[0], [1, 2]], runs, parts, set(), now, started, {}) == pytest.approx(280)
    # two lanes on schedule: the slowest lane's time, not both lanes' work added up
    fresh = [(tmp_path / f"s{i}", resolve_config("imp1", ["epochs=4"])) for i in range(2)]
    assert eta_seconds([[0], [1]], fresh, [(0, 100, 0), (0, 50, 0)], set(), now, {}, {}) == pytest.approx(100)


def test_eta_counts_the_time_a_run_spends_before_its_first_epoch_and_after_its_last(tmp_path):
    import time

    from cifarlab.lanes import eta_seconds

    runs = [(tmp_path / "r0", resolve_config("mnet1", ["epochs=4", "weights=null"]))]
    parts = [(60, 40, 20)]  # a MobileNet: 60 s embedding its views, 10 s an epoch, 20 s evaluating
    now = time.time()
    # 30 s in, no epoch yet: its views and first epoch (70 s) less 30, then 3 epochs and the evaluation
    assert eta_seconds([[0]], runs, parts, set(), now, {0: now - 30}, {}) == pytest.approx(40 + 50)
    # running late: what follows the phase is left (the pace, once it has an epoch, says how late)
    assert eta_seconds([[0]], runs, parts, set(), now, {0: now - 300}, {}) == pytest.approx(50)
    _epochs(runs[0][0], [10] * 4, now, age=5)  # all epochs done at their estimate, 5 s into the evaluation
    assert eta_seconds([[0]], runs, parts, set(), now, {0: now - 300}, {}) == pytest.approx(15)
    assert eta_seconds([[0]], runs, parts, {0}, now, {0: now - 300}, {}) == 0


def test_eta_of_a_resumed_run_counts_only_this_sessions_epochs(tmp_path):
    import time

    from cifarlab.lanes import eta_seconds

    runs = [(tmp_path / "r0", resolve_config("imp1", ["epochs=4"]))]
    now = time.time()
    _epochs(runs[0][0], [999, 999], now)  # kept from a killed session (say, on a busier machine): no pace
    # its cost is the rest (reproduce: 50 of a 100 s run); 10 s after resuming, no new epoch: 40 s left
    assert eta_seconds([[0]], runs, [(0, 50, 0)], set(), now, {0: now - 10}, {0: 2}) == pytest.approx(40)
    _epochs(runs[0][0], [999, 999, 50], now)  # its first new epoch took twice its 25 s: the last takes 50
    assert eta_seconds([[0]], runs, [(0, 50, 0)], set(), now, {0: now - 60}, {0: 2}) == pytest.approx(50)


def test_eta_of_a_run_whose_epochs_were_all_kept_is_no_division_by_zero(tmp_path):
    import time

    from cifarlab.lanes import eta_seconds

    # killed after its last epoch's history.csv but before metrics.json said finished: resumed, all 4 kept
    runs = [(tmp_path / "r0", resolve_config("imp1", ["epochs=4"]))]
    now = time.time()
    _epochs(runs[0][0], [25] * 4, now)
    # what is left is its finishing stages (100 s estimated): 60 s in, 40 s to go
    assert eta_seconds([[0]], runs, [(0, 0, 100)], set(), now, {0: now - 60}, {0: 4}) == pytest.approx(40)


def test_the_parent_failing_stops_every_lane_instead_of_orphaning_it(tiny_tree, tmp_path):
    import time

    runs = [(tmp_path / f"r{i}", resolve_config("imp1", ["epochs=15", "batch_size=8", f"seed={i}"])) for i in range(2)]

    def say(msg: str) -> None:  # e.g. a closed pipe on the terminal's side, once both lanes train
        if "ETA" in msg and all((d / "history.csv").is_file() for d, _ in runs):
            raise BrokenPipeError("stdout closed")

    with pytest.raises(BrokenPipeError):
        train_in_lanes(runs, [1, 1], str(tiny_tree), 2, say, every=0.2)
    epochs = [len((d / "history.csv").read_text().splitlines()) - 1 for d, _ in runs]
    time.sleep(3)  # an orphaned lane would train on
    assert [len((d / "history.csv").read_text().splitlines()) - 1 for d, _ in runs] == epochs
    assert all(0 < e < 15 for e in epochs) and not any(_locked(d) for d, _ in runs)


def _locked(run_dir) -> bool:
    """Whether a live process holds the run's lock (runctl's flock on RUN_DIR/.lock)."""
    import fcntl

    if not (run_dir / ".lock").exists():  # removed on release
        return False
    with open(run_dir / ".lock") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False
