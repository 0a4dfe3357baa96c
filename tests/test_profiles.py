"""Profiles: what each plans, `full` as the study's old name, the laptop presets' promises, the dry-run plan,
and the divergence guard."""

import pytest
import yaml

from cifarlab.config import load_preset, resolve_config
from cifarlab.data.augment import augment_config
from cifarlab.errors import UserError
from cifarlab.profiles import ROWS, estimate_parts, estimate_plan, get_profile, plan, plan_yaml, run_folder
from cifarlab.train.runctl import check_progress

ARCH_KEYS = ("model", "alpha", "input_size", "trainable", "head", "dropout", "weights")


def test_full_is_the_study_profile_and_keeps_old_run_folders(tmp_path):
    assert get_profile("full") is get_profile("study")
    assert run_folder(tmp_path, "full") == tmp_path / "runs" / "study"
    (tmp_path / "runs" / "full").mkdir(parents=True)  # runs made before the rename are reused
    assert run_folder(tmp_path, "study") == tmp_path / "runs" / "full"
    with pytest.raises(UserError, match="--profile must be one of study, laptop, quick, full"):
        get_profile("fast")


@pytest.mark.parametrize("row", ROWS)
def test_laptop_presets_keep_the_study_network_and_augmentation(row):
    study, laptop = resolve_config(row), resolve_config(f"{row}-laptop")
    assert laptop.extends == row and laptop.preset == f"{row}-laptop"
    for key in ARCH_KEYS:
        assert getattr(laptop, key) == getattr(study, key), key
    assert augment_config(laptop) == augment_config(study)  # the study's augmentation where it used it
    assert laptop.tta == "none"  # Table 2 is scored as the study scored it
    header = load_preset(f"{row}-laptop")["description"]
    assert header  # says what differs


def test_plans_name_rows_presets_and_seeds(tmp_path):
    laptop = plan(tmp_path, "laptop", 2, "w.tflite")
    assert [j.row for j in laptop[::2]] == list(ROWS) and len(laptop) == 10
    assert {j.preset for j in laptop} == {f"{r}-laptop" for r in ROWS}
    assert laptop[0].run_dir == tmp_path / "runs" / "laptop" / "base-laptop-seed0"
    assert all(j.cfg.weights == "w.tflite" for j in laptop if j.row.startswith("mnet"))


def test_dry_run_yaml_holds_each_runs_config_and_minutes(tmp_path):
    jobs = plan(tmp_path, "laptop", 1, "w.tflite")
    seconds = estimate_plan(jobs, 500)
    docs = list(yaml.safe_load_all(plan_yaml(jobs, seconds, "laptop", 2)))
    assert len(docs) == 6
    for job, doc in zip(jobs, docs):
        assert set(doc) == set(job.cfg.to_dict()) | {"estimated_minutes"}
        assert doc["preset"] == job.preset and doc["estimated_minutes"] > 0
    total = docs[-1]
    assert total["profile"] == "laptop" and total["runs"] == 5
    assert total["estimated_minutes"] < total["estimated_run_minutes"]  # two at a time
    # MNET2 reuses MNET1's views: its estimate has no embedding pass
    mnet1, mnet2 = seconds[3], seconds[4]
    assert estimate_plan(jobs[4:], 500)[0] > mnet2


def test_a_resumed_run_is_estimated_for_what_it_has_left(tmp_path):
    jobs = plan(tmp_path, "laptop", 1, "w.tflite")
    full = estimate_plan(jobs, 500, resumed=True)  # no run directories yet: the same as the plan
    assert full == estimate_plan(jobs, 500)
    imp2, mnet1 = jobs[2], jobs[3]
    for job, kept in ((imp2, 40), (mnet1, 1)):
        job.run_dir.mkdir(parents=True)
        job.run_dir.joinpath("history.csv").write_text("epoch,val_acc\n" + "".join(f"{e},0.5\n" for e in range(kept)))
    left = estimate_plan(jobs, 500, resumed=True)
    assert left[2] < 0.2 * full[2]  # IMP2 at 40 of 45 epochs: its last 5 and its evaluation
    # MNET1 at epoch 1 of 6 has its views on disk: no embedding pass left, and 5 epochs
    assert left[3] < sum(estimate_parts(mnet1.cfg, robustness_limit=500, views_cached=True)) < full[3]


def test_the_study_profile_costs_hours_and_the_laptop_one_about_ninety_minutes(tmp_path):
    hours = sum(estimate_plan(plan(tmp_path, "study", 1, None), 2000)) / 3600
    docs = list(yaml.safe_load_all(plan_yaml(jobs := plan(tmp_path, "laptop", 1, None),
                                             estimate_plan(jobs, 500), "laptop", 2)))
    assert hours > 5 and docs[-1]["estimated_minutes"] <= 95


def test_divergence_stops_with_one_line_naming_the_learning_rate():
    row = lambda e, acc, loss=1.0: {"epoch": e, "train_loss": loss, "val_acc": acc}
    check_progress([row(1, 0.10), row(2, 0.12)], 10_000)  # not yet learning: fine
    check_progress([row(1, 0.45), row(2, 0.52)], 10_000)
    check_progress([row(1, 0.45), row(2, 0.10)], 30)  # 30 images: too noisy to tell
    check_progress([row(1, 0.2, loss=4.6), row(2, 0.3, loss=2.0)], 10_000)  # a rough first epoch that recovers
    with pytest.raises(UserError, match="fell back to chance .* learning rate is too high") as e:
        check_progress([row(1, 0.45), row(2, 0.52), row(3, 0.10)], 10_000)
    assert "\n" not in str(e.value) and "last.pt keeps epoch 2" in str(e.value)
    with pytest.raises(UserError, match="training loss rose to 9"):
        check_progress([row(1, 0.3, loss=2.0), row(2, 0.3, loss=9.0)], 10_000)
