"""What the app does, without the web page: trained runs loaded once, a photo prepared as the models
see it, every model's answer, and why (CAMs, occlusion, activation grids). The Gradio page (`ui.py`)
only calls these, so they are tested without a browser.

Thread safety: every request shares the loaded models. Predictions run the model as it is, in
inference mode (nothing in it changes, so requests may overlap). Explanations hook into layers and
need gradients, so they run on a second copy of each model (a `Probe`), one request at a time per model:
a hook left by a CAM can never fire inside a concurrent prediction.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from cifarlab import CLASSES
from cifarlab.config import Config
from cifarlab.data.testset import (FITS, UnreadablePhoto, blur_kernel_length, blur_kernel_size, blur_sigma,
                                   list_testset, load_photo, prepare_photo)
from cifarlab.errors import UserError
from cifarlab.models.predict import predict_logits
from cifarlab.rundir import RunDir
from cifarlab.viz import activations, attribution, sheet
from cifarlab.viz.probe import Probe

METHODS = {"Grad-CAM": "gradcam", "Grad-CAM++": "gradcam++", "Score-CAM": "scorecam", "occlusion": "occlusion"}
TOP = 5
SHOW = 256  # side of the explanation tiles, px
# Decoding plus the study's full-resolution blur peaks at about 0.6 GB above torch for a 50-MP photo
# (benchmarks/blur_memory.py): photos above BIG_PHOTO are prepared one at a time, so a few people
# dropping phone photos at once cannot exhaust the memory; small photos never wait for them.
BIG_PHOTO = 8_000_000
_big_photo = threading.BoundedSemaphore(1)


# ---------------------------------------------------------------- the loaded runs

@dataclass
class Model:
    run: Path
    label: str
    cfg: Config
    net: nn.Module  # predictions only: never hooked, run in inference mode
    probe: Probe  # explanations: its own copy of the weights, hooks and gradients
    temperature: float | None  # from eval/robustness.json's calibration, if the run was calibrated
    lock: threading.Lock = field(default_factory=threading.Lock)  # one explanation at a time

    @property
    def input_size(self) -> int:
        return self.probe.input_size

    def layers(self) -> list[tuple[str, str]]:
        """(shown name, layer name) of every activation layer, input side first."""
        return [(f"{layer.name} ({layer.shape[1]}x{layer.shape[2]}x{layer.shape[0]})", layer.name)
                for layer in self.probe.layers]

    def default_layer(self) -> str:
        """The last activation layer: the usual Grad-CAM choice (most class-specific), as `visualize` uses."""
        return self.probe.last().name


def check_run(run: str | Path, checkpoint: str = "last") -> Path:
    """A trained run directory, or one line saying why not."""
    rd = RunDir(run)
    if not rd.path.is_dir():
        raise UserError(f"{run}: no such run directory")
    if not rd.config.is_file():
        raise UserError(f"{run}: not a run directory (no config.yaml)")
    if not rd.checkpoint(checkpoint).is_file():
        raise UserError(f"{run}: not trained yet (no {checkpoint}.pt)")
    return rd.path


def read_temperature(run: Path) -> float | None:
    """T of temperature scaling, fitted by `cifarlab robustness` (eval/robustness.json), else None."""
    path = RunDir(run).eval_json("robustness")
    try:
        t = json.loads(path.read_text())["calibration"]["temperature"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(t) if isinstance(t, (int, float)) and t > 0 else None


def load_model(run: str | Path, checkpoint: str = "last") -> Model:
    """A run's model, on the CPU, read once (RunDir.load_model): one copy for predictions, one for explanations."""
    path = check_run(run, checkpoint)
    net, cfg = RunDir(path).load_model(checkpoint, device="cpu")
    net = net.to(memory_format=torch.contiguous_format)
    size = cfg.input_size if hasattr(net, "input_size") else 32
    probe = Probe(copy.deepcopy(net), size, (cfg.preset or path.name).upper())
    return Model(path, probe.label, cfg, net, probe, read_temperature(path))


def unique_labels(models: list[Model]) -> None:
    """IMP1, MNET2...; the run directory's name is added where two runs share a preset."""
    names = [m.label for m in models]
    for m in models:
        if names.count(m.label) > 1:
            m.label = f"{m.label} ({m.run.name})"
    labels = [m.label for m in models]
    if len(set(labels)) < len(labels):
        raise UserError("the same run directory is given twice: " + ", ".join(sorted({n for n in labels if labels.count(n) > 1})))


# ---------------------------------------------------------------- a photo, as the models see it

@dataclass
class Inputs:
    """One photo prepared as `evaluate --testset` prepares it: square by `fit`, Lanczos to 32x32,
    unfiltered and with the study's blur at full resolution first."""
    name: str
    label: int | None  # true class, when known (a photo picked from the test set)
    fit: str
    size: tuple[int, int]  # the photo's width and height
    x: torch.Tensor  # uint8 (2, 3, 32, 32): unfiltered, filtered

    def image(self, filtered: bool) -> torch.Tensor:
        return self.x[1 if filtered else 0]


def read_photo(path: str | Path, name: str | None = None) -> Image.Image:
    """The hardened decoder (`cifarlab.data.images`); its one-line reason names the file as the user knows it."""
    try:
        return load_photo(path)
    except UnreadablePhoto as e:
        raise UserError(f"{name or Path(path).name}: cannot read image ({e.reason})") from None


def prepare(photo: Image.Image, name: str, label: int | None = None, fit: str = "crop") -> Inputs:
    if fit not in FITS:
        raise UserError(f"fit must be one of {', '.join(FITS)}, got '{fit}'")
    big = photo.width * photo.height > BIG_PHOTO
    with _big_photo if big else contextlib.nullcontext():
        x = torch.stack([torch.from_numpy(_array(prepare_photo(photo, f, fit))) for f in (False, True)])
    return Inputs(name, label, fit, photo.size, x)


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img).transpose(2, 0, 1).copy()


def blur_note(width: int) -> str:
    s = blur_kernel_size(width)
    k = blur_kernel_length(s)
    return f"blur s = round({width}/75) = {s}: kernel {k}x{k}, sigma {blur_sigma(k):.2f}" if s > 1 else \
        f"blur s = round({width}/75) = {s}: too small a photo to blur"


def views(inputs: Inputs, photo: Image.Image | None = None, sizes: tuple[int, ...] = (32,)) -> Image.Image:
    """One picture of what the models see: the photo, then per input size the image unfiltered and
    blurred (32 px shown x4, nearest, so its pixels show; larger sizes are the bilinear upscale the
    MobileNets apply to the 32x32 image inside their forward pass)."""
    tiles = []
    if photo is not None:
        w, h = inputs.size
        scale = min(160 / h, 320 / w)
        thumb = photo.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS,
                             reducing_gap=3.0)  # a 50 MP photo: box-reduced first, not Lanczos at full size
        tiles.append(sheet.caption(thumb, f"{inputs.name[:28]}\n{w}x{h} px, fit {inputs.fit}", font=sheet.SMALL))
    for size in sizes:
        for filtered in (False, True):
            x = inputs.image(filtered)[None].float() / 255
            if size != 32:
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            img = sheet.to_pil(x[0]).resize((max(128, size), max(128, size)), Image.Resampling.NEAREST)
            tiles.append(sheet.caption(img, f"{size}x{size}\n{'blurred' if filtered else 'unfiltered'}",
                                       font=sheet.SMALL))
    return sheet.caption(sheet.stack(tiles, horizontal=True, gap=8), blur_note(inputs.size[0]), above=False,
                         font=sheet.SMALL)


# ---------------------------------------------------------------- answers

@dataclass
class Answer:
    label: str
    temperature: float | None
    top: dict[bool, list[tuple[str, float]]]  # filtered -> top-5 (class, probability), most probable first
    true: str | None

    def top1(self, filtered: bool = False) -> str:
        return self.top[filtered][0][0]


def probabilities(model: Model, x: torch.Tensor) -> torch.Tensor:
    """Softmax of the logits `evaluate` computes (same function, test-time augmentation, autocast),
    divided by the run's temperature if it was calibrated."""
    cfg = model.cfg
    logits = predict_logits(model.net, x, cfg.eval_batch_size, cfg.channels_last, cfg.tta, cfg.amp)
    return (logits / (model.temperature or 1.0)).softmax(1)


def answer(model: Model, inputs: Inputs, k: int = TOP) -> Answer:
    p = probabilities(model, inputs.x)
    top = {}
    for filtered, row in zip((False, True), p):
        values, idx = row.topk(k)
        top[filtered] = [(CLASSES[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())]
    return Answer(model.label, model.temperature, top, CLASSES[inputs.label] if inputs.label is not None else None)


# ---------------------------------------------------------------- explanations

@dataclass
class Explanation:
    image: Image.Image
    text: str  # one line: model, method, class, its probability, layer
    target: int


def check_method(method: str) -> str:
    kind = METHODS.get(method, method)
    if kind not in METHODS.values():
        raise UserError(f"unknown method '{method}' (methods: {', '.join(METHODS)})")
    return kind


def explain(model: Model, inputs: Inputs, method: str = "Grad-CAM", target: int | str | None = None,
            layer: str | None = None, filtered: bool = False) -> Explanation:
    """A CAM (Grad-CAM, Grad-CAM++, Score-CAM, on `layer`, default the last) or an occlusion map of one
    class (default: the model's answer, as `answer` gives it) over the image as the model sees it."""
    kind = check_method(method)
    target = _class_index(target)
    if target is None:
        target = int(probabilities(model, inputs.image(filtered)[None]).argmax())
    with model.lock:
        probe = model.probe
        chosen = probe.layer(layer) if layer else probe.last()
        xin = probe.to_input(inputs.image(filtered)[None])[0]
        with torch.no_grad():
            p = float(probe.probs(xin[None])[0, target])
        if kind == "occlusion":
            heat = attribution.occlusion(probe, xin, target).clamp(min=0)
            patch, stride = attribution.patch_and_stride(probe.input_size, None, None)
            where = f"grey {patch}x{patch} patch, stride {stride}"
        else:
            heat = attribution.cams(kind, probe, xin, [target], chosen)[0]
            c, h, w = chosen.shape
            where = f"layer {chosen.name} ({h}x{w}x{c})"
    title = attribution.TITLES[kind]
    text = (f"{model.label}: {title} for '{CLASSES[target]}' (p = {p:.2f} without temperature or TTA), {where}, "
            f"{'blurred' if filtered else 'unfiltered'} input at {probe.input_size} px")
    tiles = [sheet.caption(sheet.tile(sheet.to_pil(xin), SHOW, smooth=True), "input", font=sheet.SMALL),
             sheet.caption(sheet.overlay(xin, heat, SHOW, "jet"), f"{title}: {CLASSES[target]}", font=sheet.SMALL)]
    return Explanation(sheet.stack(tiles, horizontal=True, gap=6), text, target)


def activation_grid(model: Model, inputs: Inputs, filtered: bool = False, layers: list[str] | None = None) -> Image.Image:
    """The study's Appendix A for this photo: ~4 layers from input to output, 16 channels each, 2x8."""
    label = inputs.label
    with model.lock:
        probe = model.probe
        return activations.panel(probe, inputs.image(filtered), inputs.name, label, probe.pick(layers, 4))


def _class_index(target: int | str | None) -> int | None:
    if target is None or target == "" or target == "answer":
        return None
    if isinstance(target, str):
        if target not in CLASSES:
            raise UserError(f"unknown class '{target}' (classes: {', '.join(CLASSES)})")
        return CLASSES.index(target)
    if not 0 <= int(target) < len(CLASSES):
        raise UserError(f"class index must be in [0, {len(CLASSES) - 1}], got {target}")
    return int(target)


# ---------------------------------------------------------------- the lab: runs + test set

class Lab:
    """Every loaded run (read once, shared by all requests) and the optional test set to pick photos from."""

    def __init__(self, run_dirs: list[str | Path], testset: str | Path | None = None, checkpoint: str = "last"):
        if not run_dirs:
            raise UserError("give at least one RUN_DIR")
        for run in run_dirs:  # every path checked before any model is read
            check_run(run, checkpoint)
        self.testset = Path(testset).expanduser() if testset else None
        self._photos = list_testset(self.testset) if self.testset else []
        self.models = [load_model(r, checkpoint) for r in run_dirs]
        unique_labels(self.models)

    def model(self, label: str) -> Model:
        for m in self.models:
            if m.label == label:
                return m
        raise UserError(f"no model '{label}' (models: {', '.join(m.label for m in self.models)})")

    def input_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({32, *(m.input_size for m in self.models)}))

    # the test set
    def classes(self) -> list[str]:
        return [c for c in CLASSES if any(c == rel.split("/")[0] for rel, _ in self._photos)]

    def photos(self, cls: str) -> list[str]:
        return [rel for rel, _ in self._photos if rel.split("/")[0] == cls]

    def testset_photo(self, rel: str) -> tuple[Image.Image, int]:
        label = dict(self._photos).get(rel)
        if label is None:  # only names the listing gave: a request cannot reach other files
            raise UserError(f"'{rel}' is not a photo of the test set")
        return read_photo(self.testset / rel, rel), label

    # the requests
    def predict_all(self, inputs: Inputs) -> list[Answer]:
        return [answer(m, inputs) for m in self.models]

    def explain(self, label: str, inputs: Inputs, method: str = "Grad-CAM", target: int | str | None = None,
                layer: str | None = None, filtered: bool = False) -> Explanation:
        return explain(self.model(label), inputs, method, target, layer, filtered)

    def activation_grid(self, label: str, inputs: Inputs, filtered: bool = False) -> Image.Image:
        return activation_grid(self.model(label), inputs, filtered)
