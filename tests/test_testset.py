"""Custom photo test sets: decoding every kind of file, the study's blur filter, fitting to a square,
the cache, evaluation outputs and the CLI."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cifarlab import CLASSES
from cifarlab.cli import main
from cifarlab.data.testset import (blur_kernel_length, blur_kernel_size, blur_sigma, blur_tensor, fit_square,
                                   gaussian_taps, load_photo, load_testset, prepare_photo, study_blur)
from cifarlab.errors import UserError
from cifarlab.evaluate.testset import (evaluate_testset, filter_preview, misclassified_grid, most_confused,
                                       output_files, photo_set_name)
from testdata import SHARED_DATA, quick_cfg, skip_if_missing, toy_data

REALWORLD = SHARED_DATA / "realworld"
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """An empty cache per test: the cache tests count what is in it."""
    monkeypatch.setenv("CIFARLAB_HOME", str(tmp_path / "cache"))


def solid(size, colour, mode="RGB"):
    return Image.new(mode, size, colour)


def pixel(img, xy):
    return tuple(int(v) for v in img.getpixel(xy))


def close(a, b, tol=6):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


# ---------------------------------------------------------------- decoding

def test_exif_orientation_is_applied(tmp_path):
    img = solid((40, 20), RED)
    img.paste(solid((20, 20), BLUE), (20, 0))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = load_photo(tmp_path / "o.jpg")
    assert out.size == (20, 40) and out.mode == "RGB"
    assert close(pixel(out, (10, 5)), RED, 30) and close(pixel(out, (10, 35)), BLUE, 30)  # left went to the top


def test_grey_rgba_palette_cmyk(tmp_path):
    solid((8, 8), 100, "L").save(tmp_path / "g.png")
    assert pixel(load_photo(tmp_path / "g.png"), (0, 0)) == (100, 100, 100)

    rgba = solid((3, 1), (255, 0, 0, 0), "RGBA")  # transparent red: white, like a browser page
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    rgba.save(tmp_path / "a.png")
    out = load_photo(tmp_path / "a.png")
    assert pixel(out, (0, 0)) == (255, 255, 255) and pixel(out, (1, 0)) == BLUE
    assert close(pixel(out, (2, 0)), (127, 127, 127), 2)

    p = Image.new("P", (2, 1))
    p.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png", transparency=0)
    out = load_photo(tmp_path / "p.png")
    assert pixel(out, (0, 0)) == (255, 255, 255) and pixel(out, (1, 0)) == RED

    solid((16, 16), (200, 50, 30)).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    assert close(pixel(load_photo(tmp_path / "c.jpg"), (8, 8)), (200, 50, 30))


def test_16_bit_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 128 * 257, 65535, 1000]], np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode in ("I;16", "I")  # Pillow < 10.3 opens 16-bit PNGs as "I"
    out = np.asarray(load_photo(tmp_path / "d.png"))
    assert out[0, :, 0].tolist() == [0, 128, 255, 4]  # Pillow's own convert would give 255 for the last three


def test_gif_bmp_webp(tmp_path):
    frames = [solid((8, 8), RED).convert("P"), solid((8, 8), BLUE).convert("P")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert pixel(load_photo(tmp_path / "anim.gif"), (4, 4)) == RED  # the first frame
    solid((8, 8), GREEN).save(tmp_path / "b.bmp")
    assert pixel(load_photo(tmp_path / "b.bmp"), (4, 4)) == GREEN
    solid((8, 8), BLUE).save(tmp_path / "w.webp", lossless=True)
    assert pixel(load_photo(tmp_path / "w.webp"), (4, 4)) == BLUE


@pytest.mark.parametrize("content, reason", [(b"", "empty file"), (b"hello, not a photo\n", "not an image")])
def test_unreadable_files_name_the_reason(tmp_path, content, reason):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(UserError, match=reason) as e:
        load_photo(tmp_path / "x.jpg")
    assert "x.jpg" in str(e.value) and "\n" not in str(e.value)


def test_truncated_jpeg_is_unreadable(tmp_path):
    solid((64, 64), RED).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="t.jpg"):
        load_photo(tmp_path / "t.jpg")


@pytest.mark.parametrize("side", [12, 20])  # over the limit (Pillow warns) and over twice it (Pillow refuses)
def test_decompression_bomb_guard(tmp_path, monkeypatch, side):
    solid((side, side), RED).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UserError, match="decompression bomb"):
        load_photo(tmp_path / "big.png")


# ---------------------------------------------------------------- fitting to a square

def wide_photo():
    """60x20: red edges, a green centre square."""
    img = solid((60, 20), RED)
    img.paste(solid((20, 20), GREEN), (20, 0))
    return img


def test_crop_keeps_the_centre():
    out = prepare_photo(wide_photo(), fit="crop")
    assert out.size == (32, 32)
    assert (np.asarray(out) == GREEN).all()


def test_pad_and_stretch():
    pad = prepare_photo(wide_photo(), fit="pad")
    assert pad.size == (32, 32) and fit_square(wide_photo(), "pad").size == (60, 60)
    assert pixel(pad, (16, 0)) == (170, 85, 0)  # the photo's mean colour, above it
    assert close(pixel(pad, (16, 16)), GREEN, 2)
    stretch = prepare_photo(wide_photo(), fit="stretch")
    assert stretch.size == (32, 32) and fit_square(wide_photo(), "stretch").size == (60, 20)
    assert close(pixel(stretch, (0, 16)), RED, 2) and close(pixel(stretch, (16, 16)), GREEN, 2)
    with pytest.raises(UserError, match="--fit"):
        prepare_photo(wide_photo(), fit="zoom")


# ---------------------------------------------------------------- the study's filter

def test_kernel_size_and_sigma_rules():
    assert [blur_kernel_size(w) for w in (75, 112, 113, 150, 300, 500, 3669)] == [1, 1, 2, 2, 4, 7, 49]
    assert [blur_kernel_length(s) for s in (2, 3, 4, 7, 48, 49)] == [3, 3, 5, 7, 49, 49]  # even s: s + 1
    assert [round(blur_sigma(k), 6) for k in (3, 5, 7, 49)] == [0.8, 1.1, 1.4, 7.7]  # 0.3((k-1)/2-1)+0.8


def hand_taps(k, sigma):
    g = [math.exp(-((i - (k - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(k)]
    return np.array(g) / sum(g)


def test_blur_of_an_impulse_is_the_outer_product_of_the_taps():
    x = torch.zeros(1, 3, 21, 21)
    x[..., 10, 10] = 1
    k, sigma = 5, 1.1
    out = blur_tensor(x, gaussian_taps(k, sigma))
    g = hand_taps(k, sigma)
    expected = np.zeros((21, 21))
    expected[8:13, 8:13] = np.outer(g, g)
    for c in range(3):
        np.testing.assert_allclose(out[0, c].numpy(), expected, atol=1e-6)


def test_study_blur_on_a_photo_matches_a_hand_computed_reflect_101_blur():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (9, 300, 3), dtype=np.uint8)  # w=300: s=4, so a 5x5 kernel, sigma 1.1
    out = np.asarray(study_blur(Image.fromarray(a))).astype(float)
    g2 = np.outer(*[hand_taps(5, 1.1)] * 2)
    padded = np.pad(a.astype(float), ((2, 2), (2, 2), (0, 0)), mode="reflect")  # numpy 'reflect' = OpenCV's 101
    ref = sum(g2[i, j] * padded[i:i + 9, j:j + 300] for i in range(5) for j in range(5))
    assert np.abs(out - ref).max() <= 0.5 + 1e-3  # only the rounding to uint8


def test_blur_keeps_a_constant_and_smooths_noise():
    flat = solid((300, 40), (90, 160, 220))
    assert study_blur(flat).tobytes() == flat.tobytes()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 600, 3), dtype=np.uint8))
    a, b = np.asarray(noise, float), np.asarray(study_blur(noise), float)  # s=8: 9x9 kernel
    assert abs(a.mean() - b.mean()) < 0.5 and b.var() < a.var() / 10


def test_no_blur_for_narrow_photos_and_thin_panoramas_work():
    small = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 112, 3), dtype=np.uint8))
    assert study_blur(small) is small  # s = round(112/75) = 1
    thin = solid((600, 2), (10, 20, 30))  # a 9x9 kernel on a 2-pixel-high image: reflected repeatedly
    assert study_blur(thin).tobytes() == thin.tobytes()


def whole_plane_blur(a, width):
    """study_blur before it worked in strips (commit 7534e70): each channel convolved whole, as a
    (1, 1, H, W) tensor (the shape decides PyTorch's conv backend, so it is kept)."""
    k = blur_kernel_length(blur_kernel_size(width))
    g, out = gaussian_taps(k, blur_sigma(k)), a.copy()
    for c in range(3):
        x = torch.from_numpy(a[:, :, c].copy())[None, None].float()
        out[:, :, c] = blur_tensor(x, g)[0, 0].round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def test_blur_in_strips_equals_the_whole_plane_blur_bit_for_bit(monkeypatch):
    import cifarlab.data.testset as testset
    rng = np.random.default_rng(3)

    def check(h, w, width=None):
        a = np.clip(rng.normal(0, 40, (h, w, 3)) + np.linspace(0, 200, w)[None, :, None], 0, 255).astype(np.uint8)
        assert np.array_equal(np.asarray(study_blur(Image.fromarray(a), width)), whole_plane_blur(a, width or w))

    check(1001, 1999)  # 2 MP, s=27: 7 strips of rows, then 7 of columns
    monkeypatch.setattr(testset, "STRIP_FLOATS", 50_000)  # small strips: many, ragged ones
    check(333, 517)  # odd sizes
    check(9, 300)  # one strip
    check(5, 9000), check(2, 2000)  # thin panoramas: the kernel (121, 27 taps) exceeds the height
    check(4000, 1, 3000), check(1, 700, 9000), check(7, 3, 3000)  # 1 px wide or high; kernels over both sides


def test_blur_never_convolves_a_whole_large_plane(monkeypatch):
    """The memory bound: a 1-channel conv's output costs 16 floats a pixel (oneDNN's padded channels),
    so no conv may see more than about 2 x STRIP_FLOATS values, however large the photo."""
    import cifarlab.data.testset as testset
    seen, conv = [], testset._blur_pass
    monkeypatch.setattr(testset, "_blur_pass", lambda x, g, dim: seen.append(x.numel()) or conv(x, g, dim))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 1500, 3), dtype=np.uint8))  # s=20
    study_blur(img)
    assert len(seen) > 6 and max(seen) <= 2 * testset.STRIP_FLOATS < 700 * 1500


# ---------------------------------------------------------------- folders

def make_set(root, n=2, extra=True):
    """root/<class>/ with n small photos per class (distinct colours), plus an unreadable file."""
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            solid((48 + 8 * i, 40), (c * 25, 255 - c * 25, 40 * i)).save(root / cls / f"{i}.png")
    if extra:
        (root / "cat" / "broken.jpg").write_text("not a photo")
        (root / "cat" / ".DS_Store").write_bytes(b"\0junk")
        (root / "README.md").write_text("files at the top are not photos")
    return root


def test_load_testset_skips_and_lists_unreadable_files(tmp_path, capsys):
    root = make_set(tmp_path / "set")
    ts = load_testset(root)
    assert ts.x.shape == (20, 3, 32, 32) and ts.x.dtype == torch.uint8 and ts.y.dtype == torch.int64
    assert ts.paths[:3] == ["airplane/0.png", "airplane/1.png", "automobile/0.png"]
    assert ts.y.tolist() == [c for c in range(10) for _ in range(2)]
    assert len(ts.skipped) == 1 and ts.skipped[0][0] == "cat/broken.jpg" and "not an image" in ts.skipped[0][1]
    assert (ts.filtered, ts.fit, ts.root) == (False, "crop", str(root))
    assert capsys.readouterr().err.endswith("ignored 1 hidden file (names starting with '.')\n")
    with pytest.raises(UserError, match="broken.jpg"):
        load_testset(root, strict=True)


def test_folder_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="not found"):
        load_testset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        load_testset(tmp_path / "empty")
    root = make_set(tmp_path / "set", extra=False)
    (root / "kitten").mkdir()
    with pytest.raises(UserError, match="unknown class folder 'kitten'"):
        load_testset(root)
    (root / "kitten").rmdir()
    for f in (root / "bird").iterdir():
        f.unlink()
    (root / "frog").rename(root / ".frog")  # hidden folders are ignored
    ts = load_testset(root)
    assert len(ts.y) == 16 and "no readable images for bird, frog" in capsys.readouterr().err


def test_cache_is_used_invalidated_and_rebuilt(tmp_path):
    root = make_set(tmp_path / "set", extra=False)
    a = load_testset(root, filtered=True, fit="pad")
    caches = list((tmp_path / "cache" / "testsets").glob("*.npz"))
    assert len(caches) == 1
    b = load_testset(root, filtered=True, fit="pad")
    assert torch.equal(a.x, b.x) and a.paths == b.paths
    caches[0].write_bytes(b"garbage")  # a corrupt cache is rebuilt
    assert torch.equal(load_testset(root, filtered=True, fit="pad").x, a.x)
    solid((48, 40), (1, 2, 3)).save(root / "ship" / "0.png")  # a changed photo changes the key
    c = load_testset(root, filtered=True, fit="pad")
    assert not torch.equal(c.x, a.x) and len(list((tmp_path / "cache" / "testsets").glob("*.npz"))) == 1


def test_real_photo_set(tmp_path):
    root = skip_if_missing(REALWORLD)
    n_files = sum(1 for c in CLASSES for f in (root / c).iterdir() if f.is_file() and not f.name.startswith("."))
    plain = load_testset(root)
    assert len(plain.y) + len(plain.skipped) == n_files == 283
    assert plain.x.shape == (len(plain.y), 3, 32, 32) and set(plain.y.tolist()) == set(range(10))
    blurred = load_testset(root, filtered=True)
    assert blurred.paths == plain.paths
    diff = (blurred.x.float() - plain.x.float()).abs().mean().item()
    assert 0 < diff < 10  # the blur is at full resolution: at 32x32 it is a small change


# ---------------------------------------------------------------- evaluation

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from cifarlab.train import fit

    run = tmp_path_factory.mktemp("run") / "imp1"
    fit(quick_cfg("imp1", epochs=1), toy_data(100, 20), run, quiet=True)
    return run


def test_most_confused():
    cm = torch.tensor([[5, 2, 0], [3, 4, 3], [0, 0, 9]])
    assert most_confused(cm, ("a", "b", "c"), k=2) == [("b", "a", 3), ("b", "c", 3)]
    assert most_confused(torch.eye(3, dtype=torch.long), ("a", "b", "c")) == []


def test_evaluate_testset_writes_every_file(tiny_run, tmp_path):
    ts = load_testset(make_set(tmp_path / "set"))
    report = evaluate_testset(tiny_run, ts, "test")
    for f in output_files(tiny_run, "test"):
        assert f.is_file(), f
    saved = json.loads((tiny_run / "eval" / "test.json").read_text())
    assert saved == report and saved["n"] == 20 and saved["n_skipped"] == 1
    assert saved["skipped"][0]["path"] == "cat/broken.jpg" and saved["filtered"] is False and saved["fit"] == "crop"
    assert sum(map(sum, saved["confusion_matrix"])) == 20 and len(saved["per_class_accuracy"]) == 10
    counts = [n for _, _, n in saved["most_confused"]]
    assert counts == sorted(counts, reverse=True) and sum(counts) <= 20 - round(saved["accuracy"] * 20)
    rows = list(csv.DictReader(open(tiny_run / "eval" / "test_predictions.csv")))
    assert [r["path"] for r in rows] == ts.paths
    for r in rows:
        assert abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 3e-3
        assert r["correct"] == str(int(r["true"] == r["pred"]))
    assert sum(r["correct"] == "1" for r in rows) == round(saved["accuracy"] * 20)
    assert (tiny_run / "eval" / "test_confusion.csv").read_text().startswith("true,airplane")
    with Image.open(output_files(tiny_run, "test")[-1]) as grid:
        assert grid.width > 96 and grid.height > 96


def test_misclassified_grid_shapes():
    x = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    grid = misclassified_grid(x, [5] * 10, [3] * 10, title="t")
    assert grid.height > 2 * 96 and grid.width >= 8 * 96  # two rows of up to eight
    empty = misclassified_grid(x[:0], [], [], title="t")
    assert empty.width < 400 and empty.height < 60


def test_filter_preview(tmp_path):
    root = make_set(tmp_path / "set", n=1)
    img = filter_preview(load_testset(root), n=3)
    assert img.mode == "RGB" and img.height > 3 * 160 and img.width > 4 * 128


def test_two_photo_sets_evaluated_into_one_run_keep_both_results(tiny_run, tmp_path, capsys):
    phone, web = make_set(tmp_path / "phone photos", n=1, extra=False), make_set(tmp_path / "web", n=2, extra=False)
    assert main(["evaluate", str(tiny_run), "--testset", str(phone)]) == 0
    assert main(["evaluate", str(tiny_run), "--testset", str(web)]) == 0
    assert main(["evaluate", str(tiny_run), "--testset", str(web), "--filtered"]) == 0
    eval_dir = tiny_run / "eval"
    assert json.loads((eval_dir / "phone_photos.json").read_text())["n"] == 10  # the folder name, made file-safe
    assert json.loads((eval_dir / "web.json").read_text())["n"] == 20
    assert json.loads((eval_dir / "web_filtered.json").read_text())["filtered"] is True
    for name in ("phone_photos", "web", "web_filtered"):
        assert all(f.is_file() for f in output_files(tiny_run, name))
    assert main(["evaluate", str(tiny_run), "--testset", str(web), "--name", "../x"]) == 2
    assert main(["evaluate", str(tiny_run), "--testset", str(web), "--name", "robustness"]) == 2
    assert main(["evaluate", str(tiny_run), "--name", "web"]) == 2  # no photo set to name
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and err.count("error: --name") == 3, err
    assert not (tmp_path / "x.json").exists() and not (tiny_run / "x.json").exists()


def test_testset_name():
    assert photo_set_name("/photos/realworld", False) == "realworld"
    assert photo_set_name("/photos/realworld/", True) == "realworld_filtered"
    assert photo_set_name("/photos/My Photos (2024)", False) == "My_Photos_2024"
    assert photo_set_name("/photos/validation", False) == "validation_photos"  # never overwrites validation.json
    assert photo_set_name("/photos/realworld", True, "test_filtered") == "test_filtered"
    with pytest.raises(UserError):
        photo_set_name("/photos/realworld", False, "a/b")


def test_cli_evaluate_testset(tiny_run, tmp_path, capsys, monkeypatch):
    root = make_set(tmp_path / "set")
    assert main(["evaluate", str(tiny_run), "--testset", str(root), "--filtered", "--fit", "pad"]) == 0
    out = capsys.readouterr().out
    assert "set_filtered accuracy" in out and "1 skipped" in out and "cat/broken.jpg" in out and "airplane" in out
    assert json.loads((tiny_run / "eval" / "set_filtered.json").read_text())["fit"] == "pad"
    monkeypatch.setenv("CIFARLAB_TESTSET", str(root))  # the default test set; no CIFAR-10 is read
    assert main(["evaluate", str(tiny_run), "--data", str(tmp_path / "no-cifar-here"), "--name", "test"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert json.loads((tiny_run / "eval" / "test.json").read_text())["testset"] == str(root)  # as reproduce names it
    assert main(["evaluate", str(tiny_run), "--testset", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    assert main(["evaluate", str(tiny_run), "--testset", str(root), "--strict"]) == 2
    assert "broken.jpg" in capsys.readouterr().err
