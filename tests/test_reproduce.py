"""`reproduce` end to end on tiny data: five presets trained, evaluated, tabulated and reported; a
second call reuses the finished runs."""

import numpy as np
from PIL import Image

from cifarlab import CLASSES
import time
import urllib.error
import urllib.request

import pytest

from cifarlab.errors import UserError
from cifarlab.profiles import plan
from cifarlab.reproduce import reproduce

TINY_MNET = ["alpha=0.25", "input_size=32", "weights=null", "epochs=1", "batch_size=16"]
TINY = {"base": ["epochs=1"], "imp1": ["epochs=1"], "imp2": ["epochs=1"], "mnet1": TINY_MNET, "mnet2": TINY_MNET}


def photo_tree(root):
    rng = np.random.default_rng(1)
    for c, name in enumerate(CLASSES[:4]):
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate([(300, 200), (150, 150)]):
            img = (np.full((h, w, 3), c * 40, np.uint8) + rng.integers(0, 30, (h, w, 3), dtype=np.uint8))
            Image.fromarray(img).save(root / name / f"{i}.jpg")
    return root


def test_quick_profile_plans_subsets_and_the_full_one_the_presets(tmp_path):
    quick = {j.preset: j.cfg for j in plan(tmp_path, "quick", 1, "w.tflite")}
    full = {j.preset: j.cfg for j in plan(tmp_path, "full", 2, "w.tflite")}
    assert set(quick) == {"base", "imp1", "imp2", "mnet1", "mnet2"}
    assert all(c.train_subset for c in quick.values()) and quick["mnet1"].weights == "w.tflite"
    assert full["imp2"].epochs == 150 and full["imp2"].train_subset is None
    assert len(plan(tmp_path, "full", 2, None)) == 10  # two seeds per preset


def test_reproduce_trains_evaluates_tabulates_reports_and_reuses(tiny_tree, tmp_path, capsys):
    photos = photo_tree(tmp_path / "photos")
    out = tmp_path / "out"
    index = reproduce(str(tiny_tree), str(photos), out, profile="full", overrides=TINY, jobs=2)  # two lanes
    assert index.is_file() and index.name == "index.html"
    table = (out / "table2.md").read_text()
    for model in ("BASE", "IMP1", "IMP2", "MNET1", "MNET2"):
        assert f"| {model} | 1 |" in table
    run = out / "runs" / "study" / "imp2-seed0"  # `full` is the study profile's old name
    for name in ("validation.json", "test.json", "test_filtered.json"):
        assert (run / "eval" / name).is_file()
    capsys.readouterr()
    reproduce(str(tiny_tree), str(photos), out, profile="study", overrides=TINY, jobs=1)
    assert capsys.readouterr().err.count("reusing it") == 5


def test_offline_without_weights_fails_in_seconds_before_any_run(tiny_tree, tmp_path, monkeypatch, capsys):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="--weights") as e:
        reproduce(str(tiny_tree), None, tmp_path / "out", profile="laptop")  # MNETs default to 'imagenet'
    assert time.perf_counter() - t0 < 30 and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained, nothing written


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys, monkeypatch):
    import yaml

    assert reproduce(None, None, tmp_path / "out", profile="laptop", dry_run=True) is None
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["preset"] for d in docs[:-1]] == ["base-laptop", "imp1-laptop", "imp2-laptop", "mnet1-laptop",
                                               "mnet2-laptop"]
    assert docs[-1]["estimated_minutes"] > 0 and not (tmp_path / "out").exists()
    # on a CPU half as fast as the cost model's (the probe's verdict, fixed here) the plan takes twice as long
    monkeypatch.setenv("CIFARLAB_MACHINE_SPEED", "0.5")
    on_cpu = {r: ["device=cpu"] for r in ("base", "imp1", "imp2", "mnet1", "mnet2")}  # also where a GPU is
    reproduce(None, None, tmp_path / "out", profile="laptop", dry_run=True, overrides=on_cpu)
    slow = list(yaml.safe_load_all(capsys.readouterr().out))[-1]
    assert slow["machine_speed"] == {"train": 0.5, "mobilenet": 0.5}
    assert slow["estimated_minutes"] == pytest.approx(2 * docs[-1]["estimated_minutes"], abs=0.15)  # both rounded


def test_a_run_made_with_other_settings_is_named_not_silently_reused(tiny_tree, tmp_path, capsys):
    from cifarlab.reproduce import train_stage

    jobs = plan(tmp_path, "quick", 1, None, {"base": ["epochs=1", "train_subset=20"]})[:1]
    from cifarlab.data import load_cifar10
    from cifarlab.train import fit

    cifar = load_cifar10(str(tiny_tree), progress=False)
    fit(jobs[0].cfg, cifar, jobs[0].run_dir, quiet=True)  # trained with the plan of the day
    edited = plan(tmp_path, "quick", 1, None, {"base": ["epochs=1", "train_subset=20", "lr=0.0005"]})[:1]
    train_stage(edited, [], [1.0], cifar, str(tiny_tree), 1, [], True, print)
    out = capsys.readouterr().out
    assert "reusing it" in out and "other settings than the plan's (lr)" in out
