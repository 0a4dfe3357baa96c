"""`cifarlab app`: the page's functions without a browser (answers equal `evaluate --testset`'s, the
temperature, every explanation, concurrent requests, bad photos, the study tab, the CLI's one-line
errors), then the page as a person uses it, in Debian's chromium driven by Playwright, and a bounded
load test through Gradio's HTTP API. Runs: a trained tiny IMP1, an MNET2 with the real pretrained
backbone and an untrained head (128 px), and an untrained `fast` net (test-time augmentation)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from cifarlab import CLASSES
from cifarlab.app import METHODS, Lab, Study, prepare, read_photo
from cifarlab.cli import main
from cifarlab.config import resolve_config, save_config
from cifarlab.data.testset import load_testset, prepare_photo
from cifarlab.errors import UserError
from cifarlab.evaluate import evaluate_run
from cifarlab.io import save_checkpoint
from cifarlab.models.build import build_model
from cifarlab.models.predict import predict_logits
from cifarlab.train import fit

from testdata import SHARED_DATA, quick_cfg, require, require_module, skip_if_missing, toy_data

REAL = SHARED_DATA / "realworld"
V1_TFLITE = SHARED_DATA / "pretrained" / "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync"]
PHOTOS = {"cat": 0, "dog": 1, "truck": 0}  # class -> which photo of its folder (sorted)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def built_run(run: Path, preset: str, *sets: str) -> Path:
    """A run directory from a freshly built network (pretrained backbone where the preset has one)."""
    run.mkdir(parents=True)
    cfg = resolve_config(preset, list(sets))
    save_config(cfg, run / "config.yaml")
    save_checkpoint(run / "last.pt", {"model": build_model(cfg, torch.device("cpu")).state_dict()})
    return run


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A few real photos in class folders."""
    root = tmp_path_factory.mktemp("photos") / "set"
    for cls, i in PHOTOS.items():
        (root / cls).mkdir(parents=True)
        src = sorted(skip_if_missing(REAL / cls).iterdir())[i]
        shutil.copy(src, root / cls / src.name)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, photos) -> list[Path]:
    """imp1 (trained 1 epoch on toy data, evaluated on it and on the photos), mnet2 (real backbone,
    untrained head; evaluated on the photos) and fast (untrained, flip-translate TTA)."""
    root = tmp_path_factory.mktemp("runs")
    data = toy_data(60, 20)
    imp = root / "imp1"
    fit(quick_cfg("imp1", "train_subset=40", epochs=1), data, imp, quiet=True)
    evaluate_run(imp, data.val_x, data.val_y)
    mnet = built_run(root / "mnet2", "mnet2", f"weights={skip_if_missing(V1_TFLITE)}")
    fast = built_run(root / "fast", "fast")
    for run in (imp, mnet, fast):  # what `cifarlab evaluate --testset` predicts for each photo
        assert main(["evaluate", str(run), "--testset", str(photos), "--name", "test"]) == 0
    return [imp, mnet, fast]


@pytest.fixture(scope="module")
def lab(runs, photos) -> Lab:
    return Lab(runs, photos)


def evaluated(run: Path) -> dict[str, dict[str, str]]:
    """eval/test_predictions.csv of a run: photo path -> row."""
    with open(run / "eval" / "test_predictions.csv", newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def snapshot(runs: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file under the run directories with its size and mtime: the app must change none."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for r in runs for p in sorted(r.rglob("*"))}


# ---------------------------------------------------------------- the page's functions

def test_answers_are_evaluates_for_every_photo_and_model(lab, runs, photos):
    assert [m.label for m in lab.models] == ["IMP1", "MNET2", "FAST"]
    assert [m.input_size for m in lab.models] == [32, 128, 32] and lab.models[2].cfg.tta == "flip_translate"
    for rel in (r for c in lab.classes() for r in lab.photos(c)):
        photo, label = lab.testset_photo(rel)
        answers = lab.predict_all(prepare(photo, rel, label))
        for run, a in zip(runs, answers):
            row = evaluated(run)[rel]
            assert a.top1() == row["pred"] and a.true == row["true"] == CLASSES[label]
            for c, p in a.top[False]:  # no temperature: evaluate's own probabilities (the CSV has 4 decimals)
                assert p == pytest.approx(float(row[f"p_{c}"]), abs=2e-4)
            rest = [float(row[f"p_{c}"]) for c in CLASSES if c not in dict(a.top[False])]
            assert a.top[False][-1][1] >= max(rest) - 2e-4  # the 5 most probable
            assert all(p >= q for (_, p), (_, q) in zip(a.top[True], a.top[True][1:]))


def test_blurred_answers_are_evaluate_filtered(lab, photos):
    ts = load_testset(photos, filtered=True)
    for m in lab.models:
        want = predict_logits(m.net, ts.x, tta=m.cfg.tta).softmax(1)
        for i, rel in enumerate(ts.paths):
            a = lab.predict_all(prepare(*lab.testset_photo(rel)[:1], rel))[lab.models.index(m)]
            assert a.top[True][0] == (CLASSES[int(want[i].argmax())], pytest.approx(float(want[i].max()), abs=1e-5))


def test_the_runs_temperature_scales_the_probabilities(runs, photos, tmp_path):
    run = tmp_path / "imp1"
    shutil.copytree(runs[0], run)
    (run / "eval" / "robustness.json").write_text('{"calibration": {"temperature": 2.5}}')
    lab = Lab([run])
    assert lab.models[0].temperature == 2.5
    photo = read_photo(next((photos / "cat").iterdir()))
    inputs = prepare(photo, "cat.jpg")
    logits = predict_logits(lab.models[0].net, inputs.x)
    a = lab.predict_all(inputs)[0]
    want = (logits[0] / 2.5).softmax(0)
    assert a.top[False][0] == (CLASSES[int(logits[0].argmax())], pytest.approx(float(want.max()), abs=1e-6))
    assert a.temperature == 2.5 and a.top[False][0][1] < logits[0].softmax(0).max()  # T > 1 softens


def test_inputs_follow_fit_and_blur_as_evaluate_does():
    g = torch.Generator().manual_seed(0)
    photo = Image.fromarray((torch.rand(300, 900, 3, generator=g) * 255).to(torch.uint8).numpy())  # wide, noisy
    seen = {}
    for fit_ in ("crop", "pad", "stretch"):
        inputs = prepare(photo, "wide.png", None, fit_)
        for f in (False, True):
            assert torch.equal(inputs.image(f), torch.from_numpy(
                __import__("numpy").asarray(prepare_photo(photo, f, fit_)).transpose(2, 0, 1).copy()))
        assert not torch.equal(inputs.image(False), inputs.image(True))  # s = round(900/75) = 12: blurred
        seen[fit_] = inputs.x
    assert not torch.equal(seen["crop"], seen["pad"]) and not torch.equal(seen["crop"], seen["stretch"])
    with pytest.raises(UserError, match="fit must be one of"):
        prepare(photo, "wide.png", None, "zoom")


@pytest.mark.parametrize("method", list(METHODS))
def test_every_explanation_for_a_32_and_a_128_px_model(lab, method):
    photo, label = lab.testset_photo(lab.photos("cat")[0])
    inputs = prepare(photo, "cat", label)
    # at 128 px, Score-CAM on the last layer (1,024 channels) and occlusion take seconds: the MobileNet
    # gets Score-CAM on a narrow early layer and no occlusion here (test_viz covers occlusion at 128 px)
    layers = {"IMP1": None, "MNET2": "conv_dw_2" if method == "Score-CAM" else None}
    for m in lab.models[:1 if method == "occlusion" else 2]:
        e = lab.explain(m.label, inputs, method, layer=layers[m.label])
        answer = lab.predict_all(inputs)[lab.models.index(m)].top1()
        assert e.target == CLASSES.index(answer) and f"for '{answer}'" in e.text and method in e.text
        assert e.image.size[0] == 2 * 256 + 6 and e.image.size[1] > 256
        assert ((layers[m.label] or m.default_layer()) in e.text) == (method != "occlusion")


def test_class_and_layer_pickers(lab):
    inputs = prepare(lab.testset_photo(lab.photos("dog")[0])[0], "dog")
    imp = lab.models[0]
    names = [name for _, name in imp.layers()]
    assert imp.default_layer() == names[-1] and names == imp.probe.names()
    assert lab.models[1].default_layer() == "conv_pw_13"  # Keras' names for MobileNet v1
    early = lab.explain("IMP1", inputs, "Grad-CAM", "frog", names[0])
    late = lab.explain("IMP1", inputs, "Grad-CAM", "frog", names[-1])
    assert early.target == late.target == CLASSES.index("frog") and names[0] in early.text
    assert early.image.tobytes() != late.image.tobytes()
    with pytest.raises(UserError, match="no layer 'conv9'"):
        lab.explain("IMP1", inputs, "Grad-CAM", None, "conv9")
    with pytest.raises(UserError, match="unknown method"):
        lab.explain("IMP1", inputs, "LIME")
    with pytest.raises(UserError, match="unknown class"):
        lab.explain("IMP1", inputs, "Grad-CAM", "cats")
    with pytest.raises(UserError, match="no model 'VGG'"):
        lab.explain("VGG", inputs)
    grid = lab.activation_grid("MNET2", inputs)
    assert grid.size[0] > 8 * 64 and grid.size[1] > 4 * 2 * 64  # 4 layers of 2x8 tiles, 64 px each


def test_concurrent_requests_get_what_serial_ones_get(lab):
    """Predictions share the models while CAMs hook into their own copies: interleaved, both must
    come out exactly as when run one at a time."""
    inputs = [prepare(*lab.testset_photo(r)[:1], r) for c in lab.classes() for r in lab.photos(c)]
    want_p = [[a.top for a in lab.predict_all(x)] for x in inputs]
    want_e = [lab.explain(lab.models[i % 2].label, x, "Grad-CAM").image.tobytes() for i, x in enumerate(inputs)]
    with ThreadPoolExecutor(6) as pool:
        preds = [pool.submit(lambda x: [a.top for a in lab.predict_all(x)], inputs[i % len(inputs)]) for i in range(24)]
        cams = [pool.submit(lambda i: lab.explain(lab.models[i % 2].label, inputs[i], "Grad-CAM").image.tobytes(),
                            i % len(inputs)) for i in range(6)]
        assert [f.result() for f in preds] == [want_p[i % len(inputs)] for i in range(24)]
        assert [f.result() for f in cams] == [want_e[i % len(inputs)] for i in range(6)]


def test_bad_photos_are_one_line_naming_the_file(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(good)
    cases = {"empty.jpg": b"", "notes.jpg": b"just some text\n", "cut.png": good.read_bytes()[:60],
             "page.png": b"<!DOCTYPE html><html><body>404</body></html>"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=rf"^{name}: cannot read image \(") as e:
            read_photo(tmp_path / name)
        assert "\n" not in str(e.value) and str(tmp_path) not in str(e.value)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 6_000)).save(bomb)  # 60 MP of one bit: a few kB on disk
    t = time.perf_counter()
    with pytest.raises(UserError, match="bomb.png: .*over 50000000 pixels"):
        read_photo(bomb)
    assert time.perf_counter() - t < 5  # refused from the header, not decoded


def test_only_listed_test_set_photos_can_be_picked(lab):
    for rel in ("../../etc/passwd", "cat/../../x.jpg", "cat/missing.jpg"):
        with pytest.raises(UserError, match="not a photo of the test set"):
            lab.testset_photo(rel)
    assert lab.classes() == sorted(PHOTOS, key=CLASSES.index)


def test_study_tab_reads_the_runs_and_writes_nothing(runs):
    before = snapshot(runs)
    study = Study({"IMP1": runs[0], "MNET2": runs[1]})
    table = study.table2()
    assert "| IMP1 | 1 |" in table and "| MNET2 | 1 |" in table and "87.3" in table  # ours beside the study's
    assert study.curves() is not None  # IMP1 has a history; MNET2 (never trained) has none and is left out
    pics = study.run_pictures("IMP1")
    assert [c for _, c in pics][:2] == ["confusion matrix, validation (validation)", "confusion matrix, photos (test)"]
    assert "eval/test_misclassified.png" in [c for _, c in pics]
    assert study.robustness() == []  # no eval/robustness.json yet
    with pytest.raises(UserError, match="no model 'X'"):
        study.run_pictures("X")
    assert snapshot(runs) == before


def test_cli_bad_arguments_are_one_line(runs, tmp_path, capsys, monkeypatch):
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    taken = socket.create_server(("127.0.0.1", 0))  # a port another program listens on
    shutil.copy(runs[0] / "config.yaml", untrained)
    for args, message in ((["app", str(tmp_path / "nope")], "no such run directory"),
                          (["app", str(tmp_path)], "not a run directory (no config.yaml)"),
                          (["app", str(untrained)], "not trained yet (no last.pt)"),
                          (["app", str(runs[0]), "--port", "70000"], "--port must be in"),
                          (["app", str(runs[0]), "--testset", str(tmp_path / "nope")], "not a folder"),
                          (["app", str(runs[0]), "--max-upload-mb", "0"], "must be positive"),
                          (["app", str(runs[0]), "--port", str(taken.getsockname()[1])], "in use (choose another")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    taken.close()
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the extra were not installed
    assert main(["app", str(runs[0])]) == 2
    assert "pip install 'cifarlab[app]'" in capsys.readouterr().err


# ---------------------------------------------------------------- the page in a browser, and under load

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs, photos, tmp_path_factory):
    """`cifarlab app` in its own process on a free localhost port; yields (url, process)."""
    require_module("gradio", "the app extra is not installed (pip install 'cifarlab[app]')")
    port, tmp = free_port(), tmp_path_factory.mktemp("gradio")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab", "app", *map(str, runs), "--testset", str(photos),
                             "--port", str(port), "--max-upload-mb", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # the start-up line, once the server listens (or EOF if it died)
        assert f"at http://127.0.0.1:{port}/ (bound to localhost" in line, proc.stderr.read()[-3000:]
        yield f"http://127.0.0.1:{port}/", proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def top1_shown(page, i: int, blurred: bool = False) -> str:
    return page.locator(f"#top5-{i}{'-blurred' if blurred else ''} [data-testid=label-output-value]").inner_text()


def upload(page, path: Path) -> None:
    """As a person does: clear the file shown (if any), then choose the next."""
    chooser = page.locator("#upload input[type=file]")
    if not chooser.count():
        page.locator("#upload button[aria-label='Clear']").first.click()
    chooser.set_input_files(str(path))


def test_a_person_uploads_asks_why_and_recovers_from_a_broken_file(server, runs, photos, tmp_path):
    require(CHROMIUM, "no chromium binary (apt-get install -y chromium)")
    playwright = require_module("playwright.sync_api", "playwright is not installed (pip install 'cifarlab[test]')")
    url, proc = server
    before = snapshot(runs)
    cat = next((photos / "cat").iterdir())
    truck = next((photos / "truck").iterdir())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this JPEG stops here")
    (tmp_path / "huge.png").write_bytes(b"\0" * 3 * 1024 * 1024)  # over --max-upload-mb 2
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#upload input[type=file]", state="attached")  # the page has rendered
        upload(page, cat)
        page.wait_for_function(f"document.querySelector('#summary').innerText.includes('{cat.name}')")
        for i, run in enumerate(runs):  # what the page shows is what `cifarlab evaluate` predicted
            assert top1_shown(page, i) == evaluated(run)[f"cat/{cat.name}"]["pred"]
        page.wait_for_selector("#views img")
        page.screenshot(path=tmp_path / "predict.png", full_page=True)

        page.get_by_role("tab", name="Why").click()
        page.locator("#explain").click()
        page.wait_for_selector("#cam img")
        page.wait_for_selector("#activations img")
        assert "IMP1: Grad-CAM for" in page.locator("#why-text").inner_text()
        page.screenshot(path=tmp_path / "why.png", full_page=True)

        page.get_by_role("tab", name="The study").click()
        page.wait_for_selector("#curves img")
        page.wait_for_selector("#run-pictures img")
        assert "IMP1" in page.locator("#table2").inner_text()
        page.screenshot(path=tmp_path / "study.png", full_page=True)

        page.get_by_role("tab", name="Predict").click()
        upload(page, tmp_path / "broken.jpg")
        toast = page.locator(".toast-body", has_text="broken.jpg: cannot read image")
        toast.wait_for()
        page.screenshot(path=tmp_path / "error.png")
        upload(page, tmp_path / "huge.png")
        page.locator(".toast-body", has_text="exceed the maximum allowed size").wait_for()
        upload(page, truck)  # the server kept serving
        page.wait_for_function(f"document.querySelector('#summary').innerText.includes('{truck.name}')")
        for i, run in enumerate(runs):
            assert top1_shown(page, i) == evaluated(run)[f"truck/{truck.name}"]["pred"]
        browser.close()
    for name in ("predict", "why", "study", "error"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert proc.poll() is None and snapshot(runs) == before


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class User:
    """One person's session, speaking Gradio's queue protocol over HTTP as the page's JavaScript does:
    upload the file, join the queue with the event's inputs, read the answer from the event stream."""

    def __init__(self, httpx, url: str, fn_index: dict[str, int]):
        self.httpx, self.url, self.fn_index, self.session = httpx, url, fn_index, uuid.uuid4().hex

    def upload(self, path: Path) -> dict:
        r = self.httpx.post(f"{self.url}gradio_api/upload", files={"files": (path.name, path.read_bytes())}, timeout=120)
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def call(self, api_name: str, *data) -> list:
        join = self.httpx.post(f"{self.url}gradio_api/queue/join", timeout=120, json={
            "data": list(data), "fn_index": self.fn_index[api_name], "session_hash": self.session,
            "trigger_id": None, "event_data": None})
        join.raise_for_status()
        event = join.json()["event_id"]
        with self.httpx.stream("GET", f"{self.url}gradio_api/queue/data", params={"session_hash": self.session},
                               timeout=300) as stream:
            for line in stream.iter_lines():
                msg = json.loads(line[5:]) if line.startswith("data:") else {}
                if msg.get("event_id") == event and msg.get("msg") == "process_completed":
                    assert msg["success"], msg["output"]
                    return msg["output"]["data"]
        raise AssertionError(f"{api_name}: the event stream ended without an answer")

    def image(self, file: dict) -> Image.Image:
        """An output image as the browser gets it: complete, decodable."""
        r = self.httpx.get(file["url"], timeout=120)
        r.raise_for_status()
        img = Image.open(io.BytesIO(r.content))
        img.load()
        return img


def test_load_50_predictions_and_10_cams_at_once(server, runs, photos, lab):
    """50 people drop a photo at the same moment, then 10 of them ask for a Grad-CAM at once."""
    httpx = require_module("httpx", "httpx is not installed (a dependency of gradio)")
    url, proc = server
    fn_index = {d["api_name"]: d["id"] for d in httpx.get(f"{url}config", timeout=60).json()["dependencies"]}
    files = sorted(p for c in PHOTOS for p in (photos / c).iterdir())
    want = {f.name: [evaluated(r)[f"{f.parent.name}/{f.name}"]["pred"] for r in runs] for f in files}
    users = [User(httpx, url, fn_index) for _ in range(50)]

    def predict(i: int) -> None:
        f = files[i % len(files)]
        out = users[i].call("predict", users[i].upload(f), "crop")  # (state, views, summary, labels...)
        assert [out[3 + 2 * k]["label"] for k in range(len(runs))] == want[f.name], f.name
        assert f.name in out[2] and users[i].image(out[1]).width > 5 * 128

    def explain(i: int) -> tuple[str, tuple[int, int]]:
        text, image = users[i].call("explain", None, "IMP1" if i % 2 else "MNET2", "Grad-CAM", "answer", None, False)
        return text, users[i].image(image).size

    rss0 = rss_mb(proc.pid)
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(predict, range(50)))
        cams = list(pool.map(explain, range(10)))
    for i, (text, size) in enumerate(cams):  # user i holds photo i % 3: the same answer as in this process
        f = files[i % len(files)]
        inputs = prepare(*lab.testset_photo(f"{f.parent.name}/{f.name}")[:1], f.name)
        assert text == lab.explain("IMP1" if i % 2 else "MNET2", inputs, "Grad-CAM").text and size[0] == 2 * 256 + 6
    try:  # the upload cap holds on the server too, not only in the page: 413, or the upload is cut off
        assert httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", b"\0" * 3 * 1024 * 1024)},
                          timeout=60).status_code == 413
    except httpx.RemoteProtocolError:
        pass
    predict(0)  # and it serves the next request
    rss1 = rss_mb(proc.pid)
    assert proc.poll() is None and rss1 < rss0 + 400 and rss1 < 3000, (rss0, rss1)


def test_big_photos_are_prepared_one_at_a_time(monkeypatch):
    """The full-resolution blur of a phone photo costs GBs: two at once must not run side by side."""
    import cifarlab.app.lab as lab_mod

    running, peak, guard = [0], {True: 0, False: 0}, __import__("threading").Lock()

    def slow_prepare(photo, filtered, fit):
        big = photo.width > 20
        with guard:
            running[0] += 1
            peak[big] = max(peak[big], running[0])
        time.sleep(0.1)
        with guard:
            running[0] -= 1
        return photo.resize((32, 32))

    monkeypatch.setattr(lab_mod, "prepare_photo", slow_prepare)
    monkeypatch.setattr(lab_mod, "BIG_PHOTO", 400)  # 21x21 and up is "big" here
    for side in (30, 10):
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: prepare(Image.new("RGB", (side, side)), "x"), range(4)))
    assert peak[True] == 1 and peak[False] > 1
