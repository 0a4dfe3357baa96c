"""`cifarlab export`: the ONNX graph run by onnxruntime and the TorchScript module run by torch.jit.load agree
with cifarlab's own predict_logits on 1,000 real validation images, for BASE, IMP, fast (with its flip/shift
test-time augmentation) and a MobileNet (32 -> 128 resize inside the graph); a safetensors EXPORT_DIR scores
exactly as the run; the model card says what the run recorded and nothing else; `cifarlab evaluate` takes an
export; bad input is one line, exit 2, with nothing written."""

import json
import shutil
import sys

import pytest
import torch
import yaml

from cifarlab import CLASSES
from cifarlab.cli import main
from cifarlab.config import load_config, resolve_config
from cifarlab.data import Cifar10, class_balanced_subset
from cifarlab.errors import UserError
from cifarlab.evaluate import evaluate_run
from cifarlab.evaluate.robustness import run_robustness
from cifarlab.export import CONTRACT
from cifarlab.export.load import evaluate_export, load_export
from cifarlab.export.write import export_run
from cifarlab.models.predict import predict_logits
from cifarlab.rundir import RunDir
from cifarlab.train import fit
from testdata import SHARED_DATA, require, require_module

N_VAL = 1000
# max |logit difference| allowed between an export and predict_logits. Measured on these 1,000 images (float32,
# CPU, torch 2.13, onnxruntime 1.32): TorchScript 0 for every model (the same kernels); onnxruntime (its own
# kernels, other summation orders) 1.8e-7 fast, 6.0e-7 BASE, 2.6e-6 IMP, 8.3e-6 MobileNet, with logits up to 7.
# 1e-4 is 12x the largest; an export that gets the input wrong (no test-time augmentation, a nearest resize)
# is off by more than 100x TOL: test_tolerance_catches_a_wrong_input_pipeline.
TOL = 1e-4

V1_TFLITE = SHARED_DATA / "pretrained" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
# key: (preset, overrides, training images). 1 epoch on real images: trained enough that logits are not ties.
# The MobileNet is MNET1 with the real TFLite weights (a randomly initialised one gives the same logits for
# every image): the graph upscales 32 -> 128 bilinearly, maps to [-1, 1], pads as TF's "same".
MODELS = {
    "base": ("base", [], 1000),
    "imp": ("imp2", [], 1000),
    "fast": ("fast", [], 1000),  # tta flip_translate: the graph holds 6 passes and a reflect pad
    "mobilenet": ("mnet1", ["augment=null", f"weights={V1_TFLITE}"], 200),
}


@pytest.fixture(scope="module")
def real_val(real_cifar) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 1,000 validation images (real, JPEG copy) and labels: what every export is checked on."""
    return real_cifar.val_x[:N_VAL], real_cifar.val_y[:N_VAL]


@pytest.fixture(scope="module")
def runs(real_cifar, tmp_path_factory):
    """One tiny run per model: 1 epoch on class-balanced real training images, validated on 200 others."""
    require(V1_TFLITE.is_file(), f"{V1_TFLITE} not found (shared data only exists on dev/CI machines)")
    root = tmp_path_factory.mktemp("export-runs")
    out = {}
    for key, (preset, sets, n) in MODELS.items():
        idx = class_balanced_subset(real_cifar.train_y, n, seed=0)
        data = Cifar10(real_cifar.train_x[idx], real_cifar.train_y[idx], real_cifar.val_x[-200:],
                       real_cifar.val_y[-200:], CLASSES, real_cifar.source)
        fit(resolve_config(preset, sets, epochs=1, device="cpu"), data, root / key, quiet=True)
        out[key] = root / key
    return out


def reference_logits(run, x, checkpoint="last"):
    model, cfg = RunDir(run).load_model(checkpoint, "cpu")
    return predict_logits(model, x, cfg.eval_batch_size, cfg.channels_last, cfg.tta, cfg.amp)


def onnx_logits(path, x, batch=250):
    ort = require_module("onnxruntime", "onnxruntime not installed (pip install 'cifarlab[test]')")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # not onnxruntime's default: every core, spinning
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and session.get_inputs()[0].type == "tensor(uint8)"
    return torch.cat([torch.from_numpy(session.run(["logits"], {"images": x[i:i + batch].numpy()})[0])
                      for i in range(0, len(x), batch)])


@pytest.mark.parametrize("key", MODELS)
def test_every_format_agrees_with_predict_logits(key, runs, real_val, tmp_path):
    require_module("onnxscript", "onnxscript not installed (pip install 'cifarlab[test]')")
    require_module("safetensors", "safetensors not installed (pip install 'cifarlab[test]')")
    run, x = runs[key], real_val[0]
    ref = reference_logits(run, x)
    onnx_path = export_run(run, "onnx", tmp_path / "m.onnx")
    ts_path = export_run(run, "torchscript", tmp_path / "m.pt")

    by_ort = onnx_logits(onnx_path, x)
    traced = torch.jit.load(str(ts_path))
    with torch.no_grad():  # in batches, as predict_logits runs: a MobileNet on 1,000 images at once needs GBs
        by_jit = torch.cat([traced(x[i:i + 100]) for i in range(0, len(x), 100)])
    for name, got in (("onnxruntime", by_ort), ("torch.jit", by_jit)):
        diff = (got - ref).abs().max().item()
        print(f"{key} {name}: max |dlogit| {diff:.2e} (logits up to {ref.abs().max():.1f}), argmax agrees on "
              f"{(got.argmax(1) == ref.argmax(1)).sum().item()}/{len(x)}")
        assert got.shape == (N_VAL, 10) and got.dtype == torch.float32
        assert torch.equal(got.argmax(1), ref.argmax(1)), name
        assert diff <= TOL, (name, diff)
    # the batch axis is dynamic: one image alone gives its row of the batch's logits
    torch.testing.assert_close(onnx_logits(onnx_path, x[7:8], batch=1)[0], by_ort[7], atol=TOL, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(traced(x[7:8])[0], by_jit[7], atol=TOL, rtol=0)
    # the ONNX file says where it came from (what evaluate checks)
    ort = require_module("onnxruntime", "onnxruntime not installed")
    meta = json.loads(ort.InferenceSession(str(onnx_path)).get_modelmeta().custom_metadata_map["cifarlab"])
    assert meta["run"] == str(run.resolve()) and meta["checkpoint"] == "last" and meta["input"] == CONTRACT
    assert meta["run_validation_accuracy"] == json.loads(RunDir(run).metrics.read_text())["val_accuracy"]
    # the safetensors folder, rebuilt by cifarlab (channels_last weights stored plain, loaded back)
    shared = load_export(export_run(run, "safetensors", tmp_path / "share"), "cpu").predict(x[:100])
    assert torch.equal(shared.argmax(1), ref[:100].argmax(1)) and (shared - ref[:100]).abs().max() <= TOL


def test_tolerance_catches_a_wrong_input_pipeline(runs, real_val):
    """TOL separates a faithful export from a plausible wrong one: skipping the test-time augmentation, or
    resizing 32 -> 128 with nearest instead of bilinear, moves the logits by orders of magnitude more."""
    x = real_val[0][:200]
    model, cfg = RunDir(runs["fast"]).load_model("last", "cpu")
    no_tta = predict_logits(model, x, tta="none")
    assert (no_tta - predict_logits(model, x, tta=cfg.tta)).abs().max() > 100 * TOL
    mnet, _ = RunDir(runs["mobilenet"]).load_model("last", "cpu")
    with torch.no_grad():
        xf = x.float() / 255
        nearest = mnet.tail(mnet.frozen(torch.nn.functional.interpolate(xf, size=128, mode="nearest") * 2 - 1))
        assert (nearest - mnet(xf)).abs().max() > 100 * TOL


def test_safetensors_export_scores_as_the_run_and_its_card_says_what_the_run_recorded(runs, real_val, tmp_path):
    require_module("safetensors", "safetensors not installed (pip install 'cifarlab[test]')")
    run = tmp_path / "imp"  # a copy: evaluation writes into the run directory
    shutil.copytree(runs["imp"], run)
    (x, y), source = real_val, json.loads(RunDir(run).metrics.read_text())["data"]
    run_report = evaluate_run(run, x, y, checkpoint="best", device="cpu")  # eval/validation.json for best.pt
    run_robustness([run], val_x=x, val_y=y, data_source=source, corruptions=["gaussian_noise"],
                   severities=[1], limit=200, do_sharpen=False, checkpoint="best", say=lambda s: None)
    out = export_run(run, "safetensors", tmp_path / "share", checkpoint="best")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.yaml", "model.safetensors"]

    export = load_export(out, "cpu")
    report = evaluate_export(export, x, y)
    assert report["accuracy"] == run_report["accuracy"]  # the same model, the same code: exactly
    assert torch.equal(export.predict(x), reference_logits(run, x, "best"))
    assert report["run_validation_accuracy"] == run_report["accuracy"]  # from eval/validation.json

    card = (out / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "pytorch" and meta["datasets"] == ["cifar10"] and "cifar10" in meta["tags"]
    results = meta["model-index"][0]["results"]
    assert results[0]["dataset"]["type"] == "cifar10"
    assert results[0]["metrics"][0]["value"] == round(run_report["accuracy"], 4)
    rob = json.loads(RunDir(run).eval_json("robustness").read_text())
    assert results[1]["metrics"][0]["value"] == round(rob["corruptions"]["mean_corruption_accuracy"], 4)
    assert f"{100 * run_report['accuracy']:.2f} % on 1,000 images" in body
    assert "| Real-world photos (the study's test set) | not evaluated |" in body  # never invented
    ece = rob["calibration"]["sets"]["validation"]
    assert f"{ece['ece_before']:.4f} -> {ece['ece_after']:.4f}" in body
    assert "JPEG copy" in body and "`cifar10-jpeg.tar.gz`" in body  # the data the run recorded
    metrics = json.loads(RunDir(run).metrics.read_text())
    assert metrics["machine"]["cpu_cores"] >= 1 and metrics["machine"]["name"] in body
    assert "Settings that differ from the study's `imp2` preset" in body and "| epochs | 1 | 150 |" in body
    assert "88.4 %" in body  # the study's IMP2 validation accuracy, beside ours
    assert "best.pt" in body and CONTRACT in body
    assert load_config(out / "config.yaml") == RunDir(run).load_config()


def test_cli_exports_and_evaluates_an_export_like_the_run(runs, tiny_tree, tmp_path, capsys):
    require_module("onnxscript", "onnxscript not installed (pip install 'cifarlab[test]')")
    run = tmp_path / "imp"  # a copy: evaluate writes into the run directory
    shutil.copytree(runs["imp"], run)
    assert main(["export", str(run), "--format", "onnx"]) == 0
    onnx_path = RunDir(run).export_dir / "last.onnx"  # the default --out
    assert onnx_path.is_file() and str(onnx_path) in capsys.readouterr().out

    assert main(["evaluate", str(run), "--data", str(tiny_tree)]) == 0
    ran = capsys.readouterr().out
    assert main(["evaluate", str(onnx_path), "--data", str(tiny_tree), "--out", str(tmp_path / "r.json")]) == 0
    exported = capsys.readouterr().out
    accuracy = lambda text: text.split("validation accuracy ")[1].split()[0]  # noqa: E731
    assert accuracy(exported) == accuracy(ran) and ran.splitlines()[1:11] == exported.splitlines()[1:11]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["format"] == "onnx" and report["n"] == 30 and report["run"] == str(run.resolve())
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "share")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "share"), "--data", str(tiny_tree)]) == 0
    assert accuracy(capsys.readouterr().out) == accuracy(ran)

    assert main(["evaluate", str(onnx_path), "--testset", str(tiny_tree / "test")]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert not list(RunDir(run).export_dir.glob(".*"))  # no temporary file left beside the export


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

def one_line_error(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_bad_input(runs, tmp_path, capsys):
    require_module("onnx", "onnx not installed (pip install 'cifarlab[test]')")
    import onnx
    from onnx import TensorProto, helper

    no_ckpt = tmp_path / "no-ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.yaml").write_text(RunDir(runs["fast"]).config.read_text())
    out = tmp_path / "x.onnx"
    one_line_error(capsys, ["export", str(no_ckpt), "--format", "onnx", "--out", str(out)], "last.pt", "not found")
    one_line_error(capsys, ["export", str(runs["fast"]), "--format", "tflite", "--out", str(out)], "invalid choice")
    with pytest.raises(UserError, match="unknown export format"):
        export_run(runs["fast"], "tflite", out)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for fmt in ("onnx", "safetensors"):
        one_line_error(capsys, ["export", str(runs["fast"]), "--format", fmt, "--out", str(blocker / "m")],
                       "--out", "cannot write")
    one_line_error(capsys, ["export", str(runs["fast"]), "--format", "safetensors", "--out", str(blocker)],
                   "not a cifarlab safetensors export")
    assert not out.exists() and blocker.read_text() == "not a folder"
    assert not (RunDir(no_ckpt).export_dir).exists()

    # an ONNX model that cifarlab did not write, a file that is not ONNX, a folder that is no export
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])])
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    onnx.checker.check_model(onnx.load(foreign))
    one_line_error(capsys, ["evaluate", str(foreign), "--out", str(tmp_path / "r.json")], "not a cifarlab export",
                   "metadata_props")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx" * 10)
    one_line_error(capsys, ["evaluate", str(garbage)], "not a readable ONNX model")
    one_line_error(capsys, ["evaluate", str(tmp_path / "missing.onnx")], "no such file")
    assert not (tmp_path / "r.json").exists()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".part", ".old"))]


def test_missing_extra_is_one_line_naming_the_install(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    one_line_error(capsys, ["export", str(runs["fast"]), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                   "pip install 'cifarlab[export]'")
    (tmp_path / "m.onnx").write_bytes(b"x")
    one_line_error(capsys, ["evaluate", str(tmp_path / "m.onnx")], "pip install 'cifarlab[export]'")
    assert (tmp_path / "m.onnx").read_bytes() == b"x" and not list(tmp_path.glob(".*"))
