"""The web page (Gradio): three tabs over `Lab` and `Study`. Every handler turns a UserError into a
message on the page (gr.Error) and anything unexpected into one too, so the server keeps serving.

Gradio: the ecosystem's usual library for ML demos (Hugging Face Spaces, Captum's successors): file
upload with drag and drop and a size cap, a request queue with per-event concurrency limits, an HTTP
API for every event (what the load test drives), and it serves locally without any account or network.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import traceback
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from cifarlab import CLASSES
from cifarlab.app.lab import METHODS, Answer, Inputs, Lab, prepare, read_photo, views
from cifarlab.app.study import Study
from cifarlab.data.testset import FITS
from cifarlab.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PREDICT_CONCURRENCY = 2  # 2 CPU cores: more requests at once only share them
EXPLAIN_CONCURRENCY = 2  # and each model runs one explanation at a time anyway (Model.lock)
QUEUE_MAX = 256  # requests waiting beyond this get "queue full" instead of growing memory
INTRO = ("Drop a photo (or pick one from the test set): every model answers, on the photo as it sees it "
         "(32x32; 128x128 for MobileNets), unfiltered and with the study's blur. **Why** shows where a model "
         "looks; **The study** shows the runs' results. Nothing is written into the run directories.")


def import_gradio() -> ModuleType:
    """Gradio, or one line naming the install command. No telemetry: this app never calls home."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise UserError("cifarlab app needs Gradio, an optional extra: pip install 'cifarlab[app]'") from None
    return gradio


def guard(gr: ModuleType, fn: Callable) -> Callable:
    """fn with every error shown on the page as one message; the request ends, the server goes on."""
    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        try:
            return fn(*args)
        except gr.Error:
            raise
        except UserError as e:
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # a bug: say so on the page, keep the traceback for the console
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(f"unexpected error: {type(e).__name__}: {e}", print_exception=False) from None
    return run


# ---------------------------------------------------------------- what the handlers return

def summary(answers: list[Answer], inputs: Inputs) -> str:
    """A Markdown table: each model's answer and probability, unfiltered and blurred, and the true class."""
    true = CLASSES[inputs.label] if inputs.label is not None else None
    mark = (lambda c: " ✓" if c == true else " ✗") if true else (lambda c: "")
    rows = ["| model | answer | p | answer, blurred | p | T |", "|---|---|---|---|---|---|"]
    for a in answers:
        (c0, p0), (c1, p1) = a.top[False][0], a.top[True][0]
        t = f"{a.temperature:.2f}" if a.temperature else "—"
        rows.append(f"| {a.label} | {c0}{mark(c0)} | {p0:.2f} | {c1}{mark(c1)} | {p1:.2f} | {t} |")
    head = f"**{inputs.name}**" + (f", true class **{true}**" if true else ", true class unknown")
    foot = "T: the run's temperature (from `cifarlab robustness`), applied to the probabilities; — not calibrated."
    return "\n\n".join([head, "\n".join(rows), foot])


def fresh(img: Any, copy: bool = False) -> Any:
    """The image with a text chunk unique to this response. Gradio stores each output image under a
    hash of its PNG bytes and rewrites that file in place: two requests returning the same picture at
    once (two people picking the same photo, the load test) would truncate the file while the first
    is still being downloaded. Unique bytes, unique files. `copy`: a cached image, shared by requests."""
    img = img.copy() if copy else img
    img.info["cifarlab-response"] = uuid.uuid4().hex
    return img


def label_values(answers: list[Answer]) -> list[dict[str, float]]:
    """Per model, unfiltered then blurred: {class: probability} of the top 5, for gr.Label."""
    return [dict(a.top[filtered]) for a in answers for filtered in (False, True)]


# ---------------------------------------------------------------- the page

def build(lab: Lab, study: Study, gr: ModuleType) -> Any:
    first = lab.models[0]

    def predict(source: tuple[str, str] | None, fit: str) -> tuple:
        if source is None:
            raise UserError("upload a photo, or pick one from the test set")
        kind, ref = source
        if kind == "testset":
            photo, label = lab.testset_photo(ref)
            name = ref
        else:
            photo, label, name = read_photo(ref), None, Path(ref).name
        inputs = prepare(photo, name, label, fit)
        answers = lab.predict_all(inputs)
        seen = views(inputs, photo, lab.input_sizes())
        return ({"source": source, "inputs": inputs}, fresh(seen), summary(answers, inputs), *label_values(answers))

    def predict_upload(path: str | None, fit: str) -> tuple:
        if not path:
            raise UserError("no file received (was the upload interrupted?)")
        return predict(("upload", path), fit)

    def unchanged() -> tuple:
        return tuple(gr.skip() for _ in range(3 + 2 * len(lab.models)))

    def predict_testset(rel: str | None, fit: str) -> tuple:
        if not rel:  # the class changed and emptied the photo picker: keep what is shown
            return unchanged()
        return predict(("testset", rel), fit)

    def refit(state: dict | None, fit: str) -> tuple:
        return predict(state["source"], fit) if state else unchanged()  # no photo yet: nothing to redo

    def explain(state: dict | None, model: str, method: str, target: str, layer: str | None, filtered: bool):
        inputs = _inputs(state)
        m = lab.model(model)
        if layer and layer not in [name for _, name in m.layers()]:
            layer = None  # the picker still showed another model's layer: use this one's default
        e = lab.explain(model, inputs, method, target, layer, filtered)
        return e.text, fresh(e.image)

    def grid(state: dict | None, model: str, filtered: bool):
        return fresh(lab.activation_grid(model, _inputs(state), filtered))

    def layers_of(model: str):
        m = lab.model(model)
        return gr.Dropdown(choices=m.layers(), value=m.default_layer())

    def photos_of(cls: str | None):
        return gr.Dropdown(choices=[(rel.split("/", 1)[1], rel) for rel in lab.photos(cls)] if cls else [], value=None)

    def overview():
        curves = study.curves()
        return (study.table2(), curves and fresh(curves, copy=True),
                [(fresh(img, copy=True), caption) for img, caption in study.robustness()])

    def run_pictures(label: str):
        return [(fresh(img, copy=True), caption) for img, caption in study.run_pictures(label)]

    with gr.Blocks(title="cifarlab app", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        state = gr.State(None)
        gr.Markdown("# cifarlab: what do the models make of your photo?\n" + INTRO)
        with gr.Tabs():
            with gr.Tab("Predict", id="predict"):
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(label="photo: drop it here or click (any size and format)", type="filepath",
                                         elem_id="upload")
                        if lab.testset:
                            with gr.Row():
                                cls = gr.Dropdown(lab.classes(), value=None, label="or pick from the test set: class",
                                                  elem_id="pick-class")
                                pick = gr.Dropdown([], value=None, label="photo", elem_id="pick-photo")
                        fit = gr.Radio(list(FITS), value="crop", label="make square by (as evaluate --fit)",
                                       elem_id="fit")
                    with gr.Column(scale=2):
                        gr.Markdown("**What the models see**")
                        seen = gr.Image(type="pil", format="png", interactive=False, show_label=False, elem_id="views")
                table = gr.Markdown(elem_id="summary")
                labels = []
                with gr.Row():
                    for i, m in enumerate(lab.models):
                        with gr.Column(min_width=170):
                            gr.Markdown(f"### {m.label}\n{m.input_size} px"
                                        + (f", T = {m.temperature:.2f}" if m.temperature else ""))
                            labels.append(gr.Label(num_top_classes=5, label="unfiltered", elem_id=f"top5-{i}"))
                            labels.append(gr.Label(num_top_classes=5, label="blurred (the study's filter)",
                                                   elem_id=f"top5-{i}-blurred"))
            with gr.Tab("Why", id="why"):
                with gr.Row():
                    model = gr.Dropdown([m.label for m in lab.models], value=first.label, label="model",
                                        elem_id="why-model")
                    method = gr.Radio(list(METHODS), value="Grad-CAM", label="method", elem_id="why-method",
                                      info="Score-CAM: one forward pass per channel of the layer (slow on wide "
                                      "layers); occlusion: 225 forward passes")
                    target = gr.Dropdown([("the model's answer", "answer"), *CLASSES], value="answer",
                                         label="class to explain", elem_id="why-class")
                    layer = gr.Dropdown(first.layers(), value=first.default_layer(),
                                        label="layer (CAMs; default: the last)", elem_id="why-layer")
                    filtered = gr.Checkbox(False, label="blurred input (the study's filter)", elem_id="why-blurred")
                go = gr.Button("Explain", variant="primary", elem_id="explain")
                why_text = gr.Markdown(elem_id="why-text")
                cam = gr.Image(type="pil", format="png", interactive=False, show_label=False, elem_id="cam")
                gr.Markdown("**Activations**: 16 channels of ~4 layers, input side on top, 2x8 each")
                acts = gr.Image(type="pil", format="png", interactive=False, show_label=False, elem_id="activations")
            with gr.Tab("The study", id="study") as study_tab:
                table2 = gr.Markdown(elem_id="table2")
                gr.Markdown("**Accuracy during training** (history.csv)")
                curves = gr.Image(type="pil", format="png", interactive=False, show_label=False, elem_id="curves")
                run = gr.Dropdown([m.label for m in lab.models], value=first.label, label="model", elem_id="study-model")
                run_pics = gr.Gallery(label="confusion matrices (eval/), saved pictures (viz/, eval/)", columns=3,
                                      object_fit="contain", elem_id="run-pictures", format="png")
                robust = gr.Gallery(label="robustness (eval/robustness.json, from cifarlab robustness)", columns=2,
                                    object_fit="contain", elem_id="robustness", format="png")

        shown = [state, seen, table, *labels]
        ask = dict(concurrency_limit=PREDICT_CONCURRENCY, concurrency_id="predict")
        upload.upload(guard(gr, predict_upload), [upload, fit], shown, api_name="predict", **ask)
        fit.change(guard(gr, refit), [state, fit], shown, api_name="refit", **ask)
        if lab.testset:
            cls.change(guard(gr, photos_of), cls, pick, api_name="testset_photos")
            pick.change(guard(gr, predict_testset), [pick, fit], shown, api_name="predict_testset", **ask)
        model.change(guard(gr, layers_of), model, layer, api_name="layers")
        why = dict(concurrency_limit=EXPLAIN_CONCURRENCY, concurrency_id="explain")
        go.click(guard(gr, explain), [state, model, method, target, layer, filtered], [why_text, cam],
                 api_name="explain", **why).success(guard(gr, grid), [state, model, filtered], acts,
                                                   api_name="activations", **why)
        study_tab.select(guard(gr, overview), None, [table2, curves, robust], api_name="study").then(
            guard(gr, run_pictures), run, run_pics, api_name="study_run")
        run.change(guard(gr, run_pictures), run, run_pics, api_name="study_run_change")
    return demo


def _inputs(state: dict | None) -> Inputs:
    if not state:
        raise UserError("no photo yet: upload or pick one on the Predict tab first")
    return state["inputs"]


# ---------------------------------------------------------------- serving

def check_port(host: str, port: int) -> None:
    """Fail in a second, before the models load, when the address is taken or not ours."""
    try:
        with socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET):
            pass
    except OSError as e:
        why = "in use (choose another with --port)" if e.errno in (98, 48, 10048) else (e.strerror or str(e))
        raise UserError(f"cannot serve on {host}:{port}: {why}") from None


def serve(run_dirs: list[str | Path], testset: str | Path | None = None, host: str = "127.0.0.1", port: int = 7860,
          max_upload_mb: float = 64, checkpoint: str = "last") -> None:
    """Load the runs, start the page on host:port and serve until Ctrl-C."""
    gr = import_gradio()  # a missing extra fails before minutes of model loading
    lab = Lab(run_dirs, testset, checkpoint)
    study = Study({m.label: m.run for m in lab.models})
    demo = build(lab, study, gr)
    demo.queue(max_size=QUEUE_MAX, default_concurrency_limit=1)
    try:
        _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                                share=False, show_error=True, max_file_size=int(max_upload_mb * 1024 * 1024),
                                footer_links=["api"], run_history=False, enable_monitoring=False, mcp_server=False,
                                ssr_mode=False, inbrowser=False)
    except OSError as e:  # taken since check_port: Gradio says "Cannot find empty port in range"
        raise UserError(f"cannot serve on {host}:{port}: {str(e).strip().splitlines()[0][:120]}") from None
    where = ("bound to localhost: only this machine can open it" if host in LOCAL_HOSTS else
             f"bound to {host}: other machines on the network can open it too")
    print(f"cifarlab app: {len(lab.models)} model{'s' * (len(lab.models) > 1)} "
          f"({', '.join(m.label for m in lab.models)}) at {url.rstrip('/')}/ ({where}); "
          f"uploads up to {max_upload_mb:g} MB; Ctrl-C stops", flush=True)
    try:
        demo.block_thread()  # returns on Ctrl-C, having closed the server
    finally:
        demo.close()
