"""Visualisations: sanity checks that can fail (a model that only sees one quadrant must be explained
by that quadrant; filter images must raise their channel's activation), grid shapes and layer order,
and the CLI on a trained IMP run and a pretrained MobileNet at 128 px."""

import shutil

import pytest
import torch
import torch.nn as nn
from PIL import Image

from cifarlab.cli import main
from cifarlab.config import resolve_config, save_config
from cifarlab.io import save_checkpoint
from cifarlab.models import create_model
from cifarlab.models.transfer import TransferNet
from cifarlab.models.weights import load_weights
from cifarlab.train import fit
from cifarlab.viz import Photos, Probe, activations, attribution, filters, render

from testdata import SHARED_DATA, quick_cfg, skip_if_missing, toy_data

V1_TFLITE = SHARED_DATA / "pretrained" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
REAL = SHARED_DATA / "realworld"


@pytest.fixture(autouse=True, scope="module")  # module scope: it must also cover the module's fixtures
def one_thread():
    """Small ops: thread barriers cost more than they save on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- a model that sees one quadrant

class TopRight(nn.Module):
    """Zero everything but the top-right quadrant (top-right, not top-left: a transposed map fails)."""

    def forward(self, x):
        mask = torch.zeros_like(x[:1, :1])
        mask[..., :16, 16:] = 1
        return x * mask


def in_top_right(m: torch.Tensor) -> bool:
    r, c = divmod(int(m.argmax()), m.shape[-1])
    return r < m.shape[-2] // 2 and c >= m.shape[-1] // 2


def square_images(n, g):
    """Noise everywhere; class 0: a red square in the top-right quadrant, class 1: a green one."""
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.5
    y = torch.arange(n) % 2
    for i in range(n):
        r, c = torch.randint(0, 9, (2,), generator=g).tolist()
        x[i, :, r:r + 7, 16 + c:23 + c] = 0.05
        x[i, int(y[i]), r:r + 7, 16 + c:23 + c] = 1.0
    return x, y


@pytest.fixture(scope="module")
def quadrant():
    """Bias-free convs after the mask: outside the quadrant every activation is exactly 0 (but for the
    3x3 convs' 2-pixel spill), so nothing there can explain a decision. Trained to 100 % on held-out images."""
    torch.manual_seed(0)
    model = nn.Sequential(TopRight(), nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    g = torch.Generator().manual_seed(0)
    x, y = square_images(128, g)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for step in range(60):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test_x, test_y = square_images(8, g)
    assert (model.eval()(test_x).argmax(1) == test_y).float().mean() == 1.0
    return Probe(model, 32, "QUAD"), test_x, test_y


def test_occlusion_peaks_in_the_only_quadrant_the_model_sees(quadrant):
    probe, x, y = quadrant
    for img, label in zip(x[:4], y[:4].tolist()):
        m = attribution.occlusion(probe, img, label, patch=8, stride=4)
        assert m.shape == (32, 32)
        assert in_top_right(m) and m.max() > 0.05
        assert m[20:, :12].abs().max() < 1e-5  # far from the quadrant: no patch there changes anything


@pytest.mark.parametrize("kind", attribution.CAMS)
def test_cams_peak_in_the_only_quadrant_the_model_sees(quadrant, kind):
    probe, x, y = quadrant
    layer = probe.last()
    assert layer.name == "relu2" and layer.shape == (16, 32, 32)
    for img, label in zip(x[:4], y[:4].tolist()):
        (m,) = attribution.cams(kind, probe, img, [label], layer)
        assert m.shape == (32, 32) and m.max() > 0
        assert in_top_right(m)
        assert m[20:, :12].abs().max() < 1e-5


def test_gradcam_is_captums_and_matches_a_hand_computation(quadrant):
    probe, x, y = quadrant
    layer = probe.last()
    img = x[0].clone().requires_grad_(True)
    (a,) = probe.capture(img[None], [layer])
    a.retain_grad()
    logits = probe.model[5:](a)  # pool, flatten, linear from the captured activation
    logits[0, int(y[0])].backward()
    expected = (a.grad[0].mean((1, 2))[:, None, None] * a[0]).sum(0).relu()
    assert torch.allclose(attribution.gradcam(probe, x[0], int(y[0]), layer), expected.detach(), atol=1e-6)


# ---------------------------------------------------------------- filter images

def test_filter_images_raise_their_channel_far_above_the_grey_start(quadrant):
    """The grey start is already bright for this bias-free model, so: well above it, and twice the
    highest mean the channel reaches on any of the images it was trained on."""
    probe, x, _ = quadrant
    layer = probe.layer("relu2")
    d = filters.dream(probe, layer, torch.arange(8), steps=60)
    assert d.images.shape == (8, 3, 32, 32) and 0 <= d.images.min() and d.images.max() <= 1
    with torch.no_grad():
        (pre,) = probe.capture(square_images(64, torch.Generator().manual_seed(1))[0], [layer], pre=True)
    data_max = pre[:, :8].mean((2, 3)).max(0).values
    best = filters.best(d, 4)
    assert (best.final[:-1] >= best.final[1:]).all()  # highest first
    assert (best.final > 1.5 * best.start).all() and (best.final > 2 * data_max[best.channels]).all(), (d, data_max)
    assert (d.final > d.start).sum() >= 6  # the ascent works for nearly every channel


def test_fourier_image_starts_grey_with_a_little_noise():
    img = filters.FourierImage(4, 32, torch.Generator().manual_seed(0))()
    dev = (img - 0.5).abs()
    assert img.shape == (4, 3, 32, 32) and dev.max() < 0.05 and dev.mean() > 1e-4


def test_random_transform_keeps_the_size_and_moves_the_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    t = filters.random_transform(x, g)
    assert t.shape == x.shape and not torch.allclose(t, x)


# ---------------------------------------------------------------- activation grids

def test_layers_in_forward_order_and_grid_shapes():
    probe = Probe(create_model("imp"), 32, "IMP")
    assert probe.names() == ["elu1", "elu2", "elu3", "elu4", "elu5"]
    assert [l.shape for l in probe.layers] == [(32, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 8, 8)]
    assert [type(l.pre).__name__ for l in probe.layers] == ["Conv2d"] * 5
    assert [l.name for l in probe.pick(None, 4)] == ["elu1", "elu2", "elu4", "elu5"]  # first to last, evenly
    assert [l.name for l in probe.pick(["elu5", "elu2"])] == ["elu2", "elu5"]  # input side first
    x = torch.rand(3, 32, 32)
    layers = probe.pick(None, 4)
    maps = activations.layer_maps(probe, x, layers)
    for layer, (idx, m) in zip(layers, maps):
        assert m.shape == (16, *layer.shape[1:]) and len(set(idx.tolist())) == 16
        assert torch.equal(idx, activations.channel_sample(layer, probe.layers.index(layer)))  # fixed sample
    (idx, m), = activations.layer_maps(probe, x, layers[-1:], top=True)
    (full,) = probe.capture(x[None], layers[-1:])
    assert set(idx.tolist()) == set(full[0].mean((1, 2)).topk(16).indices.tolist())
    one = activations.panel(probe, (x * 255).to(torch.uint8), "x.png", 3, layers[:1])
    four = activations.panel(probe, (x * 255).to(torch.uint8), "x.png", 3, layers)
    assert one.width == four.width == 8 * 64 + 7 * 2  # 2x8 tiles of 64 px
    assert four.height > one.height + 3 * (2 * 64 + 2)  # three more 2x8 blocks below
    block = activations.layer_block(layers[0], *maps[0], 64, "inferno", False)
    assert block.width == 8 * 64 + 7 * 2 and block.height > 2 * 64 + 2


def test_sheet_for_several_images_and_compare():
    a, b = Probe(create_model("imp"), 32, "A"), Probe(create_model("base"), 32, "B")
    assert b.names() == ["relu1"]  # the dense ReLU is not a map
    photos = Photos(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8), [0, None, 5], ["a", "b", "c"])
    single, pair = render([a], "activations", photos.take([0])), render([a, b], "activations", photos.take([0]))
    assert pair.width > 2 * single.width - 50 and pair.height == single.height  # side by side
    many = render([a], "activations", photos)
    assert many.width > 2 * single.width and many.height > 2 * single.height  # 3 images: 2 columns, 2 rows
    cams = render([a, b], "gradcam", photos)
    assert cams.width > 2 * 128 * 2


# ---------------------------------------------------------------- the CLI on real runs and photos

@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
    """Two real photos in class folders (their true class known) and one unreadable file."""
    root = tmp_path_factory.mktemp("photos") / "set"
    for cls in ("airplane", "cat"):
        (root / cls).mkdir(parents=True)
        src = sorted(skip_if_missing(REAL / cls).iterdir())[0]
        shutil.copy(src, root / cls / src.name)
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "imp1"
    fit(quick_cfg("imp1", "train_subset=40", epochs=1), toy_data(60, 20), run, quiet=True)
    return run


@pytest.fixture(scope="module")
def mnet_run(tmp_path_factory):
    """An MNET2-shaped run at 128 px with the real pretrained backbone and an untrained head."""
    run = tmp_path_factory.mktemp("runs") / "mnet2"
    run.mkdir()
    cfg = resolve_config("mnet2", [f"weights={skip_if_missing(V1_TFLITE)}"])
    save_config(cfg, run / "config.yaml")
    torch.manual_seed(0)
    backbone = load_weights(create_model("mobilenet_v1"), V1_TFLITE, input_size=128)
    net = TransferNet(backbone, 128, cfg.trainable, cfg.head, cfg.dropout)
    save_checkpoint(run / "last.pt", {"model": net.state_dict()})
    return run


def png_size(path):
    with Image.open(path) as img:
        return img.size


def test_cli_every_kind_on_imp(imp_run, photos_dir, tmp_path, capsys):
    for kind, extra in [("activations", []), ("occlusion", []), ("gradcam", []), ("gradcam++", ["--layer", "elu3"]),
                        ("scorecam", []), ("filters", ["--steps", "3", "--channels", "4", "--keep", "2"])]:
        out = tmp_path / f"{kind}.png"
        image = [] if kind == "filters" else ["--image", str(photos_dir)]
        assert main(["visualize", str(imp_run), "--kind", kind, *image, "--out", str(out), *extra]) == 0, kind
        assert png_size(out)[0] > 100
    assert "broken.jpg" in capsys.readouterr().err  # skipped with a warning, as evaluate does
    assert main(["visualize", str(imp_run), "--kind", "gradcam", "--image", str(photos_dir / "cat")]) == 0
    assert (imp_run / "viz" / "gradcam.png").is_file()  # the default: RUN_DIR/viz/KIND.png
    assert not list(tmp_path.glob(".*part")) and not list((imp_run / "viz").glob(".*part"))


def test_cli_mobilenet_at_128_px(mnet_run, photos_dir, tmp_path):
    photo = next((photos_dir / "airplane").iterdir())
    for kind, extra in [("activations", ["--top"]), ("occlusion", ["--patch", "32", "--stride", "32"]),
                        ("gradcam", []), ("scorecam", ["--layer", "conv_pw_1"]),
                        ("filters", ["--steps", "2", "--channels", "2", "--keep", "2", "--layers", "conv_dw_2"])]:
        out = tmp_path / f"{kind}.png"
        image = [] if kind == "filters" else ["--image", str(photo)]
        assert main(["visualize", str(mnet_run), "--kind", kind, *image, "--out", str(out), *extra]) == 0, kind
    assert png_size(tmp_path / "filters.png")[0] >= 2 * 128  # filter images at the model's 128 px
    assert png_size(tmp_path / "gradcam.png")[1] >= 128


@pytest.mark.parametrize("args, message", [
    (["/no/such/run", "--kind", "gradcam", "--image", "x"], "not a run directory"),
    (["RUN", "--kind", "nope", "--image", "PHOTOS"], "unknown --kind"),
    (["RUN", "--kind", "gradcam"], "needs --image"),
    (["RUN", "--kind", "gradcam", "--image", "/no/such/photo.jpg"], "no such file"),
    (["RUN", "--kind", "gradcam", "--image", "BROKEN"], "cannot read image"),
    (["RUN", "--kind", "gradcam", "--image", "EMPTY"], "no readable images"),
    (["RUN", "--kind", "gradcam", "--image", "PHOTOS", "--layer", "elu9"], "no layer 'elu9'"),
    (["RUN", "--kind", "gradcam", "--image", "PHOTOS", "--layers", "elu1,elu2"], "uses one layer"),
    (["RUN", "--kind", "occlusion", "--image", "PHOTOS", "--patch", "99"], "--patch must be"),
    (["RUN", "--kind", "filters", "--steps", "0"], "--steps must be positive"),
    (["RUN", "--kind", "gradcam", "--image", "PHOTOS", "--out", "/no/such/dir/x.png"], "does not exist"),
])
def test_bad_input_is_one_line_and_writes_nothing(imp_run, photos_dir, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    subs = {"RUN": str(imp_run), "PHOTOS": str(photos_dir), "BROKEN": str(photos_dir / "cat" / "broken.jpg"),
            "EMPTY": str(tmp_path / "empty")}
    before = sorted(p.name for p in (imp_run / "viz").glob("*")) if (imp_run / "viz").exists() else []
    assert main(["visualize", *[subs.get(a, a) for a in args]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error") == 1 and "Traceback" not in err
    after = sorted(p.name for p in (imp_run / "viz").glob("*")) if (imp_run / "viz").exists() else []
    assert after == before


def test_list_layers(mnet_run, capsys):
    assert main(["visualize", str(mnet_run), "--list-layers"]) == 0
    out = capsys.readouterr().out
    assert "conv1       64x64x32" in out and "conv_pw_13  4x4x1024" in out and out.count("\n  conv") == 27


def test_study_figures_and_report_appendices(imp_run, photos_dir, tmp_path):
    from cifarlab.data.testset import load_testset
    from cifarlab.report import write_report
    from cifarlab.reproduce import study_figures
    from cifarlab.viz import from_testset, load_probe

    run = tmp_path / "imp1"
    shutil.copytree(imp_run, run)
    shutil.rmtree(run / "viz", ignore_errors=True)
    photos = from_testset(load_testset(photos_dir, cache_dir=tmp_path))
    written = study_figures(run, photos, steps=2, quiet=True)
    names = {p.name for p in written}
    assert {"activations.png", "filters.png"} <= names
    probe = load_probe(run)  # the same model, to count its mistakes
    with torch.no_grad():
        wrong = (probe.forward(probe.to_input(photos.x)).argmax(1) != torch.tensor(photos.labels)).any().item()
    assert ("occlusion.png" in names) == ("gradcam.png" in names) == ("gradcam_pp.png" in names) == wrong
    assert study_figures(run, photos, steps=2) == []  # up to date: nothing redone
    page = write_report([run], tmp_path / "report").read_text()
    a, b = page.index("Appendix A. Activations"), page.index("Appendix B. Filter images")
    assert page.index("<h2>Visualisations</h2>") < a < b
    assert ("Appendix C." in page) == wrong
