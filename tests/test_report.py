import base64
import json
import re
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from cifarlab import CLASSES
from cifarlab.cli import main
from cifarlab.config import resolve_config, save_config
from cifarlab.data.augment import augment_config, preview_grid
from cifarlab.errors import UserError
from cifarlab.evaluate import evaluate_run
from cifarlab.io import write_csv
from cifarlab.report import lr_drop_epochs, write_report
from cifarlab.train import fit
from cifarlab.train.loop import HISTORY_FIELDS

from testdata import quick_cfg, require, toy_data

PNG = b"\x89PNG\r\n\x1a\n"


def fake_test_json(run, name="test", n=30):
    """eval/<name>.json in the test-set evaluator's format, with two skipped files."""
    cm = torch.zeros(10, 10, dtype=torch.long)
    for i in range(n):
        cm[i % 10, (i % 10) if i % 3 else 9] += 1  # every third image predicted as truck
    report = {"set": name, "checkpoint": "last", "accuracy": cm.diag().sum().item() / n, "n": n,
              "per_class_accuracy": {c: 0.5 for c in CLASSES}, "confusion_matrix": cm.tolist(),
              "classes": list(CLASSES), "skipped": [{"path": "cat/broken.jpg", "reason": "cannot identify image file"}], "n_skipped": 1,
              "most_confused": [["automobile", "truck", 1]]}
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / f"{name}.json").write_text(json.dumps(report))
    Image.new("RGB", (64, 40), (200, 30, 30)).save(run / "eval" / f"{name}_misclassified.png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """imp1 (2 epochs, lr drop after 1, evaluated, fake test set), base (1 epoch), and a MobileNet run
    faked from its config and a hand-written history (the report only reads files)."""
    root = tmp_path_factory.mktemp("runs")
    data = toy_data(60, 40)  # small: the machine is shared with training jobs
    fit(quick_cfg("imp1", "lr_drops=[[1, 0.1]]", epochs=2), data, root / "imp1", quiet=True)
    evaluate_run(root / "imp1", data.val_x, data.val_y)
    fake_test_json(root / "imp1", "test")
    fake_test_json(root / "imp1", "test_filtered")
    (root / "imp1" / "viz").mkdir()
    Image.new("RGB", (48, 48), (30, 200, 30)).save(root / "imp1" / "viz" / "activations.png")
    fit(quick_cfg("base", "train_subset=30", epochs=1), data, root / "base", quiet=True)
    mnet = root / "mnet1"
    mnet.mkdir()
    save_config(resolve_config("mnet1", ["weights=null"]), mnet / "config.yaml")
    write_csv(mnet / "history.csv", [dict(epoch=e, lr=1e-3 if e <= 3 else 1e-4, train_loss=1.0, train_acc=0.5 + e / 20,
                                          val_loss=1.0, val_acc=0.5 + e / 25, seconds=1.0) for e in range(1, 6)],
              HISTORY_FIELDS)
    extras = {"augment_preview": root / "aug.png", "filter_preview": root / "filter.png"}
    preview_grid(data.val_x[:3], augment_config(resolve_config("imp2")), n_aug=4).save(extras["augment_preview"])
    Image.new("RGB", (90, 30), (30, 30, 200)).save(extras["filter_preview"])
    return root, [root / "imp1", root / "base", mnet], extras


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    root, dirs, extras = runs
    out = tmp_path_factory.mktemp("report") / "out"
    index = write_report(dirs, out, title="Toy <report>", notes=["quick profile: training subsets"],
                         extra_images=extras)
    return index, index.read_text()


def test_lr_drops_come_from_history():
    rows = [{"epoch": 1, "lr": 1e-3}, {"epoch": 2, "lr": 1e-3}, {"epoch": 3, "lr": 1e-4}, {"epoch": 4, "lr": 1e-5}]
    assert lr_drop_epochs(rows) == [2.0, 3.0]
    assert lr_drop_epochs(rows[:1]) == []


def test_report_has_the_study_sections(report):
    index, page = report
    assert index.name == "index.html" and not list(index.parent.glob(".*.part"))
    for text in ("Table 1", "Table 2", "Figure 3", "Figure 4", "Augmentation preview", "unfiltered vs filtered",
                 "Visualisations", "Most confused pairs", "quick profile: training subsets"):
        assert text in page, text
    assert "Toy &lt;report&gt;" in page and "Toy <report>" not in page  # escaped
    assert "87.3" in page and "88.4" not in page  # imp1's study figure, not imp2's (not in these runs)
    assert "60.7" in page and "73.4" in page  # base, mnet1
    assert "<td class=num>—</td>" in page  # base has no test evaluation (another run has: not "no test set")
    assert "1 file(s) skipped" in page and "cat/broken.jpg: cannot identify image file" in page
    assert "test: 70.0 % of 30 images" in page  # 21 of the fake 30 right, shown in %
    assert "more layers" in page  # the MobileNet's Table 1 is compact
    assert "Trainable" in page and "10,250" in page  # MNET1: only the new head trains
    assert page.count("<h3>imp ") == 1  # IMP1's network once


def test_every_image_is_embedded_and_written(report):
    index, page = report
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) >= 10  # 2 curves, 2 extras, imp1: 3 confusions + 2 misclassified, 1 viz
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    pngs = sorted(p.name for p in (index.parent / "figures").glob("*.png"))
    assert len(pngs) == len(srcs), pngs
    assert "fig3_accuracy_from_scratch.png" in pngs and "IMP1_confusion_test_filtered.png" in pngs
    assert f'data-total="{len(srcs)}"' in page


def test_given_table2_and_missing_pieces(runs, tmp_path):
    _, dirs, _ = runs
    rows = [{"model": "IMP2", "preset": "imp2", "n_runs": 3, "validation": 90.0, "validation_std": 0.4,
             "test": None, "test_std": None, "test_filtered": None, "test_filtered_std": None,
             "study_validation": 88.4, "study_test": 58.5, "study_test_filtered": 79.0}]
    page = write_report([dirs[1]], tmp_path / "r", table2=rows).read_text()  # base: no eval/, no extras
    assert "90.0 ± 0.4" in page and "88.4" in page and "no test set" in page
    assert "No evaluation yet" in page and "Figure 3" in page and "Figure 4" not in page
    assert "Augmentation preview" not in page and "Visualisations" not in page


def test_two_runs_of_one_preset_get_distinct_names(runs, tmp_path):
    _, dirs, _ = runs
    twin = tmp_path / "imp1-seed1"
    twin.mkdir()
    for name in ("config.yaml", "history.csv"):
        shutil.copy(dirs[0] / name, twin / name)
    index = write_report([dirs[0], twin, dirs[0]], tmp_path / "r")  # the repeated run is shown once
    page = index.read_text()
    assert "<h3>IMP1 (imp1)</h3>" in page and "<h3>IMP1 (imp1-seed1)</h3>" in page
    assert page.count("<h3>IMP1") == 2


def test_bad_input_is_one_line_user_error(runs, tmp_path):
    root, dirs, _ = runs
    with pytest.raises(UserError, match="not a run directory"):
        write_report([dirs[0], tmp_path], tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        write_report(dirs[:1], tmp_path / "file")
    with pytest.raises(UserError, match="not found"):
        write_report(dirs[:1], tmp_path / "out", extra_images={"augment_preview": tmp_path / "nope.png"})
    with pytest.raises(UserError, match="not a PNG"):
        write_report(dirs[:1], tmp_path / "out", extra_images={"x": tmp_path / "file"})
    assert not (tmp_path / "out").exists()  # input is checked before anything is written


def test_cli_report(runs, tmp_path, capsys):
    _, dirs, _ = runs
    assert main(["report", str(dirs[1]), "--out", str(tmp_path / "r"), "--title", "T"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(tmp_path / "r" / "index.html"))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and len(err.strip().splitlines()) == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]


def test_page_loads_in_a_real_browser(report, tmp_path):
    require(CHROMIUM, "no chromium binary (apt-get install -y chromium)")
    index, page = report

    def chromium(*args):
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args,
                               index.resolve().as_uri()], capture_output=True, text=True, timeout=60)

    dom = chromium("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    n = len(re.findall(r"<img ", page))
    assert 'data-broken="0"' in dom.stdout and f'data-total="{n}"' in dom.stdout, dom.stdout[-500:]
    assert f"{n} images, 0 broken" in dom.stdout
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,3000")
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 20_000
