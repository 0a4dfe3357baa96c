"""MobileNet v1/v2 and their pretrained weights: TF padding, freezing, and proof on the real files
that the TFLite and Keras imports are right (ImageNet classes on real photos, agreement with the
TFLite interpreter, a linear probe on CIFAR-10)."""

import io
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cifarlab.data import class_balanced_subset
from cifarlab.errors import UserError
from cifarlab.models import create_model, mobilenet
from cifarlab.models.mobilenet import MobileNetV1, MobileNetV2, SameConv2d, freeze_, same_pad
from cifarlab.models import weights
from cifarlab.models.weights import imagenet_url, load_weights
from testdata import SHARED_DATA, require_module, skip_if_missing

PRETRAINED = SHARED_DATA / "pretrained"
V1_TFLITE = PRETRAINED / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
V2_TFLITE = PRETRAINED / "mobilenet_v2_1.0_224_quant.tflite"
REALWORLD = SHARED_DATA / "realworld"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: these are small batches, and on a busy 2-core machine a second thread spends more
    time waiting for a core than it saves (measured 2x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photos(cls: str, n: int, size: int = 224) -> np.ndarray:
    """The first n photos of a realworld class as uint8 (n, size, size, 3): shorter side to size, centre crop."""
    out = []
    for path in sorted(skip_if_missing(REALWORLD / cls).iterdir())[:n]:
        im = Image.open(path).convert("RGB")
        s = size / min(im.size)
        im = im.resize((max(size, round(im.width * s)), max(size, round(im.height * s))), Image.BILINEAR)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        out.append(np.asarray(im.crop((left, top, left + size, top + size))))
    return np.stack(out)


def to_input(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255


# ---------------------------------------------------------------- architecture

def test_same_pad_matches_tensorflow():
    assert same_pad(128, 3, 2) == (0, 1)  # even size, stride 2: all padding after
    assert same_pad(127, 3, 2) == (1, 1)
    assert same_pad(7, 3, 1) == same_pad(8, 3, 1) == (1, 1)
    assert same_pad(8, 1, 2) == (0, 0)
    conv = SameConv2d(2, 4, 3, 2, bias=False)
    for n, pad in [(8, (0, 1, 0, 1)), (7, (1, 1, 1, 1))]:
        x = torch.randn(1, 2, n, n)
        assert conv(x).shape[-1] == -(-n // 2)
        torch.testing.assert_close(conv(x), F.conv2d(F.pad(x, pad), conv.weight, stride=2))
    x = torch.randn(1, 2, 8, 6)  # asymmetric in one dimension only
    torch.testing.assert_close(conv(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2))


def test_shapes_and_registry():
    v1 = create_model("mobilenet_v1").eval()
    assert len(v1.features) == 27 and v1.feature_dim == 1024
    x = torch.rand(2, 3, 128, 128)
    assert v1.forward_features(x).shape == (2, 1024, 4, 4)
    assert v1(x).shape == (2, 1024)
    assert create_model("mobilenet_v1", alpha=0.25, num_classes=10)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    v2 = create_model("mobilenet_v2", num_classes=1001).eval()
    assert len(v2.features) == 19 and v2.feature_dim == 1280
    assert v2(torch.rand(1, 3, 224, 224)).shape == (1, 1001)
    # Keras' no-top parameter counts (batch-norm moving statistics included) for the same widths
    n = lambda m: sum(t.numel() for k, t in m.state_dict().items() if "num_batches" not in k)  # noqa: E731
    assert n(MobileNetV1(0.25)) == 218_544 and n(MobileNetV1(1.0)) == 3_228_864
    assert n(MobileNetV2(0.35)) == 410_208 and n(MobileNetV2(1.0)) == 2_257_984


def test_freeze_keeps_batchnorm_statistics_and_gradients_off():
    torch.manual_seed(0)
    model = MobileNetV1(alpha=0.25, num_classes=10)
    freeze_(model.features[:-1])
    model.eval()
    model.train()  # a training loop does this every epoch
    assert not model.features[0].training and not model.features[0].bn.training
    assert model.features[-1].training and model.classifier.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    F.cross_entropy(model(torch.rand(8, 3, 32, 32)), torch.arange(8)).backward()
    opt.step()
    after = model.state_dict()
    for k in before:
        if k.startswith("features.") and int(k.split(".")[1]) < 26:  # features[:-1]
            assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None and not p.requires_grad for p in model.features[:-1].parameters())
    assert not torch.equal(before["features.26.bn.running_mean"], after["features.26.bn.running_mean"])
    assert model.features[-1].conv.weight.grad is not None and model.classifier.weight.grad is not None


# ---------------------------------------------------------------- the real TFLite files

@pytest.fixture(scope="module")
def v2_classifier():
    return load_weights(MobileNetV2(num_classes=1001).eval(), skip_if_missing(V2_TFLITE))


# realworld class -> ImageNet labels (first name of each line of imagenet_labels.txt) that count as a hit
IMAGENET_KINDS = {
    "cat": {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat", "lynx"},
    "airplane": {"airliner", "warplane", "wing", "airship", "space shuttle"},
    "ship": {"container ship", "liner", "fireboat", "schooner", "yawl", "catamaran", "trimaran",
             "pirate", "aircraft carrier", "lifeboat", "speedboat", "wreck", "submarine", "dock"},
}


def test_v2_classifier_names_real_photos(v2_classifier):
    labels = [line.split(",")[0] for line in skip_if_missing(PRETRAINED / "imagenet_labels.txt").read_text().splitlines()]
    assert len(labels) == 1001 and labels[0] == "background"
    for cls, kinds in IMAGENET_KINDS.items():
        with torch.no_grad():
            top5 = v2_classifier(to_input(photos(cls, 10))).topk(5).indices
        hits = [bool(kinds & {labels[i] for i in row}) for row in top5.tolist()]
        # measured: 10/10 cats, 9/10 airplanes, 10/10 ships
        assert sum(hits) >= 7, (cls, [[labels[i] for i in row] for row in top5.tolist()])


def test_v1_features_match_the_tflite_interpreter(monkeypatch):
    interpreter_module = require_module("ai_edge_litert.interpreter", "ai-edge-litert not installed")
    model = load_weights(MobileNetV1().eval(), skip_if_missing(V1_TFLITE))
    interpreter = interpreter_module.Interpreter(model_path=str(V1_TFLITE))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    images = np.concatenate([photos(cls, 2) for cls in ("cat", "dog", "ship", "frog")])
    expected = []
    for image in images:  # the interpreter takes the uint8 pixels, our model the same pixels / 255
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        q = interpreter.get_tensor(out["index"]).reshape(-1).astype(np.float32)
        scale, zero = out["quantization"]
        expected.append((q - zero) * scale if scale else q)
    with torch.no_grad():
        got = model(to_input(images))
    expected = torch.from_numpy(np.stack(expected))
    cos = F.cosine_similarity(got, expected)
    assert cos.min() >= 0.99, cos  # measured: min 0.9993 (the interpreter's activations are uint8)

    # the check can tell: PyTorch-style symmetric padding shifts every stride-2 layer by a pixel
    monkeypatch.setattr(mobilenet, "same_pad", lambda n, k, s: ((k - 1) // 2, (k - 1) // 2))
    with torch.no_grad():
        assert F.cosine_similarity(model(to_input(images)), expected).min() < 0.95  # measured: 0.89


@pytest.mark.slow
def test_pretrained_v1_linear_probe_beats_random_init(real_cifar):
    """Frozen v1 features of 1,000 CIFAR images at 128 px, logistic regression on 800, test on 200.
    Measured: pretrained 68.0 %, random init 14.5 % (CIFAR-10, JPEG q75 copy)."""
    torch.manual_seed(0)
    idx = class_balanced_subset(real_cifar.train_y, 1000, seed=0)
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(0))]
    x, y = real_cifar.train_x[idx], real_cifar.train_y[idx]

    def features(model):
        model = model.to(memory_format=torch.channels_last)  # ~1.5x faster on CPU
        with torch.no_grad():
            return torch.cat([model(F.interpolate(xb.float() / 255, size=128, mode="bilinear")
                                    .contiguous(memory_format=torch.channels_last)) for xb in x.split(100)])

    def probe(f):
        f = (f - f[:800].mean(0)) / (f[:800].std(0) + 1e-6)
        linear = torch.nn.Linear(f.shape[1], 10)
        opt = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(linear(f[:800]), y[:800]) + 1e-2 * linear.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return (linear(f[800:]).argmax(1) == y[800:]).float().mean().item()

    pretrained = probe(features(load_weights(MobileNetV1().eval(), skip_if_missing(V1_TFLITE))))
    # a random init in eval mode passes nothing through (activations shrink to ~1e-20 by the last
    # layer), so the fair baseline uses batch statistics, as in the random network's first training step
    random = probe(features(MobileNetV1().train()))
    assert pretrained >= random + 0.15 and pretrained >= 0.5, (pretrained, random)


def test_classifier_file_into_backbone_loads_backbone_and_says_so(capsys, v2_classifier):
    model = load_weights(MobileNetV2(), skip_if_missing(V2_TFLITE)).eval()
    err = capsys.readouterr().err
    assert "backbone only" in err and "1001-class" in err and err.count("\n") == 1
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), v2_classifier.forward_features(x))


def test_dequantize_per_tensor_and_per_channel():
    """The real files are uint8 per tensor; int8 files quantise each output channel separately."""
    from cifarlab.models.weights import _dequantize

    def fake(q: np.ndarray, ttype: int, scale: list, zero: list, shape: tuple | None = None):
        """Stand-ins for the flatbuffer Model and Tensor objects _dequantize reads."""
        quant = SimpleNamespace(ScaleLength=lambda: len(scale), ScaleAsNumpy=lambda: np.array(scale, np.float32),
                                ZeroPointLength=lambda: len(zero), ZeroPointAsNumpy=lambda: np.array(zero),
                                QuantizedDimension=lambda: 0)
        dims = np.array(q.shape if shape is None else shape)
        tensor = SimpleNamespace(ShapeLength=lambda: len(dims), ShapeAsNumpy=lambda: dims, Type=lambda: ttype,
                                 Buffer=lambda: 0, Name=lambda: b"w", Quantization=lambda: quant)
        data = np.frombuffer(q.tobytes(), np.uint8)
        return SimpleNamespace(Buffers=lambda i: SimpleNamespace(DataAsNumpy=lambda: data)), tensor, "f.tflite"

    q = np.array([[1, 2, 3], [-4, 5, -128]], np.int8).reshape(2, 1, 1, 3)  # OHWI, two output channels
    np.testing.assert_allclose(_dequantize(*fake(q, 9, [0.5, 0.25], [0, 0])),
                               q * np.array([0.5, 0.25], np.float32).reshape(2, 1, 1, 1))
    q = np.array([0, 128, 255], np.uint8)
    np.testing.assert_allclose(_dequantize(*fake(q, 3, [0.1], [128])), [-12.8, 0, 12.7], rtol=1e-6)
    q = np.array([-70000, 3], np.int32)  # a bias: int32, scale = input scale * filter scale
    np.testing.assert_allclose(_dequantize(*fake(q, 2, [1e-4], [0])), [-7.0, 3e-4], rtol=1e-6)
    with pytest.raises(UserError, match="short data"):
        _dequantize(*fake(np.zeros(3, np.uint8), 3, [0.1], [0], shape=(4,)))


# ---------------------------------------------------------------- files that do not fit

def one_line_error(model, source, **kwargs) -> str:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as e:
        load_weights(model, source, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # untouched
    return msg


def test_bad_tflite_files_fail_in_one_line(tmp_path):
    data = skip_if_missing(V1_TFLITE).read_bytes()
    (tmp_path / "cut.tflite").write_bytes(data[: len(data) // 2])
    assert "truncated" in one_line_error(MobileNetV1(), tmp_path / "cut.tflite")
    (tmp_path / "noise.tflite").write_bytes(np.random.default_rng(0).bytes(5000))
    assert "not a TFLite model" in one_line_error(MobileNetV1(), tmp_path / "noise.tflite")
    assert "not found" in one_line_error(MobileNetV1(), tmp_path / "missing.tflite")
    assert "unknown weights format" in one_line_error(MobileNetV1(), V1_TFLITE.parent / "imagenet_labels.txt")

    msg = one_line_error(MobileNetV1(), V2_TFLITE)
    assert "'MobilenetV2/expanded_conv/project/Conv2D_Fold' has shape (16, 1, 1, 32)" in msg
    assert "features.2.conv.weight needs (64, 32, 1, 1)" in msg
    msg = one_line_error(MobileNetV1(alpha=0.5), V1_TFLITE)
    assert msg == ("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite: tensor "
                   "'MobilenetV1/MobilenetV1/Conv2d_0/Conv2D_Fold' has shape (32, 3, 3, 3) but the model's "
                   "features.0.conv.weight needs (16, 3, 3, 3) (other alpha?)")
    assert "'MobilenetV1/MobilenetV1/Conv2d_1_pointwise/Conv2D_Fold'" in one_line_error(MobileNetV2(), V1_TFLITE)


# ---------------------------------------------------------------- Keras .h5

def keras_names(model: MobileNetV1 | MobileNetV2) -> list[tuple[str, str]]:
    """(conv layer, its batch norm layer) in model order, named as in Keras' applications files."""
    if isinstance(model, MobileNetV1):
        convs = ["conv1"] + [f"conv_{kind}_{i}" for i in range(1, 14) for kind in ("dw", "pw")]
        return [(c, f"{c}_bn") for c in convs]
    blocks = [["expanded_conv_depthwise", "expanded_conv_project"]] + \
        [[f"block_{b}_{kind}" for kind in ("expand", "depthwise", "project")] for b in range(1, 17)]
    return [("Conv1", "bn_Conv1")] + [(c, f"{c}_BN") for block in blocks for c in block] + [("Conv_1", "Conv_1_bn")]


def write_keras_h5(path: Path, model: MobileNetV1 | MobileNetV2) -> None:
    """A MobileNet v1 or v2 in the layout of Keras' save_weights files (mobilenet_*_tf[_no_top].h5,
    mobilenet_v2_weights_tf_dim_ordering_tf_kernels_*.h5): root attrs layer_names, per layer attrs
    weight_names and datasets like conv1/conv1/kernel:0; layers without weights (ReLU, padding) too."""
    h5py = pytest.importorskip("h5py")
    units = [m for m in model.modules() if isinstance(m, mobilenet.ConvBNReLU)]
    names = keras_names(model)
    assert len(names) == len(units)
    with h5py.File(path, "w") as f:
        layers = []

        def layer(name, weights):
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/{k}:0".encode() for k in weights], dtype="S")
            for k, v in weights.items():
                group.create_dataset(f"{name}/{k}:0", data=v.detach().numpy())
            layers.append(name)

        layer("input_1", {})
        for (name, bn_name), unit in zip(names, units):
            w, bn = unit.conv.weight, unit.bn
            if unit.depthwise:  # (C, 1, kh, kw) -> (kh, kw, C, 1)
                layer(f"{name}_pad", {})
                layer(name, {"depthwise_kernel": w.permute(2, 3, 0, 1)})
            else:  # (out, in, kh, kw) -> (kh, kw, in, out)
                layer(name, {"kernel": w.permute(2, 3, 1, 0)})
            layer(bn_name, {"gamma": bn.weight, "beta": bn.bias,
                            "moving_mean": bn.running_mean, "moving_variance": bn.running_var})
            layer(f"{name}_relu", {})
        if isinstance(model.classifier, torch.nn.Linear):  # Keras' 1x1 conv_preds
            layer("conv_preds", {"kernel": model.classifier.weight.T[None, None], "bias": model.classifier.bias})
        f.attrs["layer_names"] = np.array([n.encode() for n in layers], dtype="S")
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand_like(v) + 0.5 if "running_var" in k else torch.randn_like(v))
    return model.eval()


def test_keras_h5_round_trip(tmp_path):
    torch.manual_seed(0)
    source = randomised(MobileNetV1(alpha=0.25, num_classes=5))
    write_keras_h5(tmp_path / "m.h5", source)
    model = load_weights(MobileNetV1(alpha=0.25, num_classes=5), tmp_path / "m.h5").eval()
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))

    msg = one_line_error(MobileNetV1(alpha=0.5), tmp_path / "m.h5")
    assert "'conv1/conv1/kernel:0' has shape (3, 3, 3, 8)" in msg and "needs (16, 3, 3, 3) (other alpha?)" in msg
    assert "other architecture?" in one_line_error(MobileNetV2(alpha=0.35), tmp_path / "m.h5")
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert "cannot read Keras weights" in one_line_error(MobileNetV1(), tmp_path / "bad.h5")


def test_keras_h5_round_trip_mobilenet_v2(tmp_path):
    """mnet2-v2's default weights are Keras' MobileNet v2 .h5: the v2 names and order load exactly."""
    torch.manual_seed(0)
    source = randomised(MobileNetV2(alpha=0.35))
    write_keras_h5(tmp_path / "v2.h5", source)
    model = load_weights(MobileNetV2(alpha=0.35), tmp_path / "v2.h5").eval()
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))
    assert "other architecture?" in one_line_error(MobileNetV1(alpha=0.25), tmp_path / "v2.h5")
    assert "other alpha?" in one_line_error(MobileNetV2(alpha=0.5), tmp_path / "v2.h5")


# ---------------------------------------------------------------- imagenet: download and cache

def test_imagenet_downloads_once_and_caches(tmp_path, monkeypatch):
    torch.manual_seed(0)
    source = randomised(MobileNetV1(alpha=0.25))
    write_keras_h5(tmp_path / "src.h5", source)
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return io.BytesIO((tmp_path / "src.h5").read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    model = load_weights(MobileNetV1(alpha=0.25), "imagenet", cache_dir=tmp_path / "cache", input_size=128)
    assert urls == ["https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
                    "mobilenet_2_5_128_tf_no_top.h5"]
    assert [p.name for p in (tmp_path / "cache" / "weights").iterdir()] == ["mobilenet_2_5_128_tf_no_top.h5"]
    torch.testing.assert_close(model.features[5].conv.weight, source.features[5].conv.weight)
    load_weights(MobileNetV1(alpha=0.25), "imagenet", cache_dir=tmp_path / "cache", input_size=128)
    assert len(urls) == 1  # the second load reads the cache


def test_imagenet_offline_or_corrupt_download_fails_in_one_line(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    msg = one_line_error(MobileNetV1(), "imagenet", cache_dir=tmp_path)
    assert "--weights FILE" in msg and "mobilenet_1_0_224_tf_no_top.h5" in msg
    assert list((tmp_path / "weights").iterdir()) == []  # no .part left behind

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"not the file"))
    assert "md5" in one_line_error(MobileNetV1(), "imagenet", cache_dir=tmp_path)
    assert list((tmp_path / "weights").iterdir()) == []
    assert "--weights FILE" in one_line_error(MobileNetV1(alpha=0.3), "imagenet", cache_dir=tmp_path)


def test_imagenet_file_names(capsys):
    base = "https://storage.googleapis.com/tensorflow/keras-applications/"
    assert imagenet_url(MobileNetV1(alpha=0.75), 160) == base + "mobilenet/mobilenet_7_5_160_tf_no_top.h5"
    assert imagenet_url(MobileNetV2(alpha=0.35), 96) == \
        base + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    assert capsys.readouterr().err == ""
    assert imagenet_url(MobileNetV1(), 32).endswith("mobilenet_1_0_128_tf_no_top.h5")  # CIFAR's size: nearest
    assert "using the 128 px ones" in capsys.readouterr().err
    assert imagenet_url(MobileNetV2(alpha=1.4), 128).endswith("kernels_1.4_224_no_top.h5")


V2_128 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5"


def serve(monkeypatch, payload: bytes) -> list[str]:
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return urls


def test_imagenet_size_and_md5_are_checked_after_download_and_in_the_cache(tmp_path, monkeypatch):
    import hashlib

    source = randomised(MobileNetV2(alpha=0.35))
    write_keras_h5(tmp_path / "src.h5", source)
    good = (tmp_path / "src.h5").read_bytes()
    monkeypatch.setitem(weights.KNOWN_FILES, V2_128, (len(good), hashlib.md5(good).hexdigest()))
    cached = tmp_path / "cache" / "weights" / V2_128

    serve(monkeypatch, good[:-1])  # truncated in transit
    assert f"expected {len(good)} bytes" in one_line_error(MobileNetV2(alpha=0.35), "imagenet",
                                                           cache_dir=tmp_path / "cache", input_size=128)
    assert list(cached.parent.iterdir()) == []

    urls = serve(monkeypatch, good)
    model = load_weights(MobileNetV2(alpha=0.35), "imagenet", cache_dir=tmp_path / "cache", input_size=128)
    assert urls[0].endswith("mobilenet_v2/" + V2_128) and cached.read_bytes() == good
    torch.testing.assert_close(model.features[3].conv[1].conv.weight, source.features[3].conv[1].conv.weight)

    for damage in (good + b"x", bytes([good[0] ^ 1]) + good[1:]):  # wrong size; same size, wrong md5
        cached.write_bytes(damage)
        msg = one_line_error(MobileNetV2(alpha=0.35), "imagenet", cache_dir=tmp_path / "cache", input_size=128)
        assert "cached ImageNet weights are corrupt" in msg and "deleted it" in msg
        assert not cached.exists()
        load_weights(MobileNetV2(alpha=0.35), "imagenet", cache_dir=tmp_path / "cache", input_size=128)
        assert cached.read_bytes() == good  # downloaded afresh
    assert len(urls) == 3


def test_an_unreadable_cached_file_of_unknown_hash_is_deleted(tmp_path, monkeypatch):
    assert V2_128 not in weights.KNOWN_FILES
    cached = tmp_path / "weights" / V2_128
    cached.parent.mkdir()
    cached.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # e.g. a captive portal's page, or a cut download
    serve(monkeypatch, b"")  # never called: the file is cached
    msg = one_line_error(MobileNetV2(alpha=0.35), "imagenet", cache_dir=tmp_path, input_size=128)
    assert "cannot read Keras weights" in msg and "deleted the cached download" in msg
    assert not cached.exists()
