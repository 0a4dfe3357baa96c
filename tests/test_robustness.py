"""Robustness sweeps, the photo blur pipeline, calibration and pooling; CLI end to end on tiny runs."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cifarlab import CLASSES
from cifarlab.cli import main
from cifarlab.data.photo_sweep import blurred_operator, prepare_photo_sweep, resize_matrix
from cifarlab.data.testset import blur_tensor, gaussian_taps, prepare_photo
from cifarlab.evaluate.calibration import calibration_report, ece, fit_temperature, reliability_bins, split_halves
from cifarlab.evaluate.robustness import balanced_subset, pool



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models and images: thread barriers cost more than they save (10x on a shared CI machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- calibration


def toy_predictor(n: int, overconfidence: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(true logits): perfectly calibrated; the returned logits are the true
    ones times `overconfidence`."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=g) * 2
    y = torch.multinomial(logits.softmax(1), 1, generator=g).flatten()
    return logits * overconfidence, y


def test_ece_of_a_calibrated_predictor_is_near_zero_and_of_an_overconfident_one_is_not():
    logits, y = toy_predictor(100_000)
    assert ece(logits.softmax(1), y) < 0.01
    logits, y = toy_predictor(100_000, overconfidence=3.0)
    assert ece(logits.softmax(1), y) > 0.1


def test_ece_of_a_known_gap():
    probs = torch.full((1000, 10), 0.1 / 9)
    probs[:, 0] = 0.9  # always 90 % confident in class 0 ...
    y = torch.tensor([0] * 600 + [1] * 400)  # ... and right 60 % of the time
    assert ece(probs, y) == pytest.approx(0.3, abs=1e-6)
    bins = reliability_bins(probs, y)
    assert sum(bins["count"]) == 1000 and bins["count"][13] == 1000  # 0.9 lies in bin [0.867, 0.933)


def test_temperature_scaling_recovers_the_temperature_and_lowers_ece():
    logits, y = toy_predictor(20_000, overconfidence=3.0)
    assert fit_temperature(logits, y) == pytest.approx(3.0, rel=0.05)
    rep = calibration_report(logits, y, logits[:500], y[:500])
    assert rep["n_fit"] == rep["n_eval"] == 10_000 and "first half" in rep["split"]
    for s in ("validation", "realworld"):
        assert rep["sets"][s]["ece_after"] < rep["sets"][s]["ece_before"] / 3


def test_split_halves_is_fixed_and_disjoint():
    a, b = split_halves(101)
    assert len(a) == 50 and len(b) == 51 and not set(a.tolist()) & set(b.tolist())
    assert torch.equal(a, split_halves(101)[0])


# ---------------------------------------------------------------- subsets and the photo pipeline

def test_balanced_subset_takes_the_first_images_of_each_class():
    y = torch.arange(1000) % 10
    idx = balanced_subset(y, 25)
    assert len(idx) == 25 and torch.bincount(y[idx], minlength=10).tolist() == [3] * 5 + [2] * 5
    assert idx.tolist()[:3] == [0, 1, 2] and len(balanced_subset(y, None)) == 1000


def synthetic_photo(w: int = 301, h: int = 226) -> Image.Image:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 200, w)[None, :, None] + np.linspace(0, 40, h)[:, None, None]
    img = base + rng.normal(0, 25, (h, w, 3))  # texture: what blur and aliasing act on
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def as_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def test_photo_pipeline_matches_load_testsets_resize_and_the_study_filter():
    img = synthetic_photo()
    out = prepare_photo_sweep(torch.from_numpy(np.asarray(img, dtype=np.float32)),
                              [("antialias", "0"), ("antialias", "study"), ("nearest", "0"), ("bilinear", "0")])
    d = (out[0].float() - as_tensor(prepare_photo(img, False)).float()).abs()
    assert d.mean() < 0.01 and d.max() <= 1  # Pillow's fixed-point taps: off by one at most
    d = (out[1].float() - as_tensor(prepare_photo(img, True)).float()).abs()
    assert d.mean() < 0.3 and d.max() <= 3  # study_blur rounds the blurred photo to 8 bits; we do not
    s, left = 226, (301 - 226) // 2
    crop = img.crop((left, 0, left + s, s))
    assert torch.equal(out[2], as_tensor(crop.resize((32, 32), Image.Resampling.NEAREST)))
    ref = F.interpolate(as_tensor(crop)[None].float(), size=(32, 32), mode="bilinear", align_corners=False)
    assert (out[3].float() - ref[0].round()).abs().max() <= 1


def test_blurred_operator_equals_blur_then_resize():
    x = torch.rand(1, 1, 40, 40) * 255
    taps = gaussian_taps(9, 2.0)
    m = resize_matrix(40, 32, "bilinear")
    direct = m.float() @ blur_tensor(x, taps)[0, 0] @ m.float().T
    fused = blurred_operator(m, taps).float()
    assert torch.allclose(fused @ x[0, 0] @ fused.T, direct, atol=1e-2)
    for method in ("antialias", "nearest", "bilinear"):
        assert torch.allclose(resize_matrix(500, 32, method).sum(1), torch.ones(32, dtype=torch.float64))


def test_stronger_blur_before_resizing_removes_more_detail():
    img = torch.from_numpy(np.asarray(synthetic_photo(), dtype=np.float32))
    levels = ["0", "0.004", "0.016", "0.048"]
    out = prepare_photo_sweep(img, [("nearest", lv) for lv in levels])
    detail = [(o.float()[:, 1:] - o.float()[:, :-1]).abs().mean().item() for o in out]
    assert all(a > b for a, b in zip(detail, detail[1:])), detail


def test_pool_gives_mean_and_std_over_runs_of_a_preset():
    def result(acc, preset="imp1"):
        return {"preset": preset, "transfer": False,
                "corruptions": {"clean": acc, "mean_corruption_accuracy": acc - 0.1,
                                "accuracy": {"contrast": {"1": acc - 0.1}}}}
    pooled = {p.label: p for p in pool([result(0.8), result(0.6), result(0.5, "base")])}
    assert pooled["IMP1"].n_runs == 2 and pooled["IMP1"].mean["clean"] == pytest.approx(0.7)
    assert pooled["IMP1"].std["clean"] == pytest.approx(0.1414, abs=1e-3) and "clean" not in pooled["BASE"].std


# ---------------------------------------------------------------- CLI end to end

def photo_tree(root):
    rng = np.random.default_rng(1)
    for c, name in enumerate(CLASSES[:3]):
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate([(300, 200), (160, 160)]):
            img = np.full((h, w, 3), c * 60, np.uint8) + rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.jpg")
    (root / CLASSES[0] / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def tiny_runs(tiny_tree, tmp_path_factory):
    """Two seeds of imp1 and one MobileNet (alpha 0.25 at 32 px, no weights), one epoch each on tiny data."""
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for name, args in (("imp1-seed0", ["--preset", "imp1", "--seed", "0"]),
                       ("imp1-seed1", ["--preset", "imp1", "--seed", "1"]),
                       ("mnet1", ["--preset", "mnet1", "--set", "alpha=0.25", "--set", "input_size=32",
                                  "--set", "weights=null", "--set", "batch_size=16"])):
        assert main(["train", *args, "--data", str(tiny_tree), "--epochs", "1", "--out", str(root / name),
                     "--quiet"]) == 0
        runs.append(root / name)
    return runs


def test_cli_robustness_end_to_end(tiny_runs, tiny_tree, tmp_path, monkeypatch, capsys):
    photos = photo_tree(tmp_path / "photos")
    out = tmp_path / "rb"
    rc = main(["robustness", *map(str, tiny_runs), "--data", str(tiny_tree), "--testset", str(photos),
               "--severities", "1,5", "--limit", "20", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tiny_runs[0] / "eval" / "robustness.json").read_text())
    assert res["corruptions"]["n"] == 20 and set(res["corruptions"]["accuracy"]["pixelate"]) == {"1", "5"}
    assert res["blur"]["n"] == 6 and res["blur"]["n_skipped"] == 1
    assert set(res["blur"]["accuracy"]) == {"antialias", "nearest", "bilinear"}
    assert "realworld" in res["calibration"]["sets"] and res["calibration"]["n_fit"] == 10
    with open(out / "corruptions.csv") as f:
        rows = list(csv.DictReader(f))
    imp1 = [r for r in rows if r["model"] == "IMP1"]
    assert imp1 and all(r["runs"] == "2" and r["std"] != "" for r in imp1)  # two seeds: mean ± std
    for name in ("summary.md", "blur_sweep.csv", "corruption_sweep.png", "blur_sweep.png", "reliability.png"):
        assert (out / name).is_file()
    assert "Do from-scratch models gain more from blur?" in (out / "summary.md").read_text()
    before = (tiny_runs[0] / "eval" / "robustness.json").stat().st_mtime_ns
    assert main(["robustness", *map(str, tiny_runs), "--reuse", "--no-validation", "--testset", str(photos),
                 "--out", str(tmp_path / "pooled")]) == 0  # nothing to evaluate: only pooled
    assert (tiny_runs[0] / "eval" / "robustness.json").stat().st_mtime_ns == before
    assert (tmp_path / "pooled" / "corruptions.csv").read_text() == (out / "corruptions.csv").read_text()

    monkeypatch.delenv("CIFARLAB_TESTSET", raising=False)
    assert main(["robustness", str(tiny_runs[0]), "--data", str(tiny_tree), "--corruptions", "contrast",
                 "--severities", "2", "--no-sharpen", "--limit", "20", "--out", str(tmp_path / "one")]) == 0
    res = json.loads((tiny_runs[0] / "eval" / "robustness.json").read_text())  # one corruption redone, rest kept
    assert set(res["corruptions"]["accuracy"]["contrast"]) == {"2"} and "pixelate" in res["corruptions"]["accuracy"]
    assert res["blur"]["n"] == 6 and "sharpen" in res

    from cifarlab.report import write_report
    html = write_report(tiny_runs, tmp_path / "report").read_text()
    assert "<h2>Robustness</h2>" in html and "robustness_blur_sweep.png" in str(list((tmp_path / "report" / "figures").iterdir()))


@pytest.mark.parametrize("args, message", [
    (["--severities", "0-7"], "--severities"),
    (["--corruptions", "snow"], "unknown 'snow'"),
    (["--resize", "cubic"], "--resize"),
    (["--limit", "5"], "--limit"),
    (["--no-validation"], "--testset"),
])
def test_cli_bad_input_is_one_line_exit_2(tiny_runs, args, message, capsys, monkeypatch):
    monkeypatch.delenv("CIFARLAB_TESTSET", raising=False)
    assert main(["robustness", str(tiny_runs[0]), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["robustness", str(tmp_path)]) == 2
    assert "not a trained run directory" in capsys.readouterr().err


def test_study_hook_evaluates_stale_runs_only(tiny_runs, tiny_tree, tmp_path):
    from cifarlab.data import load_cifar10
    from cifarlab.reproduce import study_robustness

    cifar = load_cifar10(str(tiny_tree))
    for run in tiny_runs:
        (run / "eval" / "robustness.json").unlink(missing_ok=True)
    said = []
    written = study_robustness(tiny_runs[:1], cifar, None, tmp_path / "out", 10, said.append)
    assert (tmp_path / "out" / "corruption_sweep.png") in written
    assert json.loads((tiny_runs[0] / "eval" / "robustness.json").read_text())["corruptions"]["n"] == 10
    said.clear()
    study_robustness(tiny_runs[:1], cifar, None, tmp_path / "out", 10, said.append)
    assert not said  # fresh results are reused
