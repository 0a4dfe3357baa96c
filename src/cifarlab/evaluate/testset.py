"""Scores for a trained run on a custom test set of photos (`cifarlab.data.testset`), written next to
the run: the report (JSON), the confusion matrix and per-image predictions (CSV), and a grid of the
misclassified images with their true and predicted labels (PNG, the study's Appendix C)."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image, ImageDraw

from cifarlab import CLASSES
from cifarlab.data.testset import (TestSet, UnreadablePhoto, blur_kernel_length, blur_kernel_size, blur_sigma,
                                   load_photo, prepare_photo, study_blur)
from cifarlab.errors import UserError
from cifarlab.evaluate.metrics import classification_report, write_confusion_csv
from cifarlab.io import write_csv, write_json
from cifarlab.models.predict import predict_logits
from cifarlab.pictures import INK, PAPER, SMALL, caption, save_png, stack, to_pil
from cifarlab.rundir import RunDir

GRID_SCALE = 3  # misclassified tiles: 32x32 shown at 96x96
GRID_COLUMNS = 8
GRID_MAX = 256  # tiles drawn at most; the JSON and CSV list them all
_MUTED = (200, 0, 0)  # the predicted class, in red


def most_confused(cm: torch.Tensor | Sequence[Sequence[int]], classes: Sequence[str] = CLASSES,
                  k: int = 5) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal cells (true, predicted, count), largest first; ties in class order."""
    cm = torch.as_tensor(cm)
    n = len(classes)
    cells = [(int(cm[i, j]), i, j) for i in range(n) for j in range(n) if i != j and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(classes[i], classes[j], n) for n, i, j in cells[:k]]


def evaluate_testset(run_dir: str | Path, testset: TestSet, name: str = "test",
                     checkpoint: str = "last", device: str = "auto") -> dict[str, Any]:
    """Evaluate the run on the test set; writes eval/<name>.json, <name>_confusion.csv,
    <name>_predictions.csv and <name>_misclassified.png. Returns the JSON report."""
    rd = RunDir(run_dir)
    model, cfg = rd.load_model(checkpoint, device)
    logits = predict_logits(model, testset.x, cfg.eval_batch_size, cfg.channels_last, cfg.tta, cfg.amp)  # upscales if it must
    probs, y = logits.softmax(1), testset.y.cpu()
    pred = probs.argmax(1)
    report = {"set": name, "checkpoint": checkpoint, **classification_report(y, logits),
              "testset": testset.root, "filtered": testset.filtered, "fit": testset.fit,
              "n_skipped": len(testset.skipped),
              "skipped": [{"path": p, "reason": r} for p, r in testset.skipped]}
    report["most_confused"] = [list(t) for t in most_confused(report["confusion_matrix"])]

    out = rd.eval_dir
    out.mkdir(exist_ok=True)
    write_json(rd.eval_json(name), report)
    write_confusion_csv(out / f"{name}_confusion.csv", report["confusion_matrix"])
    write_csv(out / f"{name}_predictions.csv", prediction_rows(testset.paths, y, probs),
              ["path", "true", "pred", "correct", *(f"p_{c}" for c in CLASSES)])
    wrong = (pred != y).nonzero().flatten()
    grid = misclassified_grid(testset.x[wrong], y[wrong].tolist(), pred[wrong].tolist(),
                              title=f"{name}: {len(wrong)} of {len(y)} misclassified")
    save_png(grid, out / f"{name}_misclassified.png")
    return report


def output_files(run_dir: str | Path, name: str) -> list[Path]:
    """What evaluate_testset writes, in order."""
    out = RunDir(run_dir).eval_dir
    return [out / f"{name}{s}" for s in (".json", "_confusion.csv", "_predictions.csv", "_misclassified.png")]


def prediction_rows(paths: list[str], y: torch.Tensor, probs: torch.Tensor) -> list[dict[str, Any]]:
    pred = probs.argmax(1)
    return [{"path": p, "true": CLASSES[t], "pred": CLASSES[q], "correct": int(t == q),
             **{f"p_{c}": f"{v:.4f}" for c, v in zip(CLASSES, pr)}}
            for p, t, q, pr in zip(paths, y.tolist(), pred.tolist(), probs.tolist())]


# ---------------------------------------------------------------- pictures

def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = SMALL.getbbox(text)
    return int(right), int(bottom)


def _label(img: Image.Image, text: str) -> Image.Image:
    """img with a centred caption above it."""
    return caption(img, text, font=SMALL, center=True)


def _arrow_caption(true: str, pred: str) -> tuple[int, Callable[[ImageDraw.ImageDraw, int, int], None]]:
    """Width and a drawing function for 'true → pred'; the arrow is drawn, since PIL's default font has no '→'."""
    wt, wp, gap, arrow = _text_size(true)[0], _text_size(pred)[0], 2, 9

    def draw(d: ImageDraw.ImageDraw, x: int, y: int) -> None:
        d.text((x, y), true, fill=INK, font=SMALL)
        ax, ay = x + wt + gap, y + _text_size("x")[1] // 2 + 2
        d.line([(ax, ay), (ax + arrow - 1, ay)], fill=_MUTED)
        d.polygon([(ax + arrow, ay), (ax + arrow - 3, ay - 3), (ax + arrow - 3, ay + 3)], fill=_MUTED)
        d.text((ax + arrow + gap + 1, y), pred, fill=_MUTED, font=SMALL)

    return wt + wp + arrow + 2 * gap + 1, draw


def misclassified_grid(x: torch.Tensor, true: list[int], pred: list[int], title: str = "",
                       classes: Sequence[str] = CLASSES, columns: int = GRID_COLUMNS) -> Image.Image:
    """The study's Appendix C: misclassified uint8 images (N, 3, H, W) upscaled x3 (nearest, so the
    model's actual pixels show), each captioned 'true → pred' underneath, `columns` per row."""
    if len(x) == 0:
        return _label(Image.new("RGB", (240, 20), PAPER), title or "no misclassified images")
    shown = min(len(x), GRID_MAX)
    captions = [_arrow_caption(classes[t], classes[p]) for t, p in zip(true[:shown], pred[:shown])]
    side = x.shape[-1] * GRID_SCALE
    cell_w = max(side, *(w for w, _ in captions)) + 6
    strip = _text_size("Ag")[1] + 6
    tiles = []
    for img, (w, draw) in zip(x[:shown], captions):
        tile = Image.new("RGB", (cell_w, side + strip), PAPER)
        tile.paste(to_pil(img).resize((side, side), Image.Resampling.NEAREST), ((cell_w - side) // 2, 0))
        draw(ImageDraw.Draw(tile), (cell_w - w) // 2, side + 2)
        tiles.append(tile)
    rows = [stack(tiles[i:i + columns], horizontal=True) for i in range(0, len(tiles), columns)]
    note = f" (first {shown} shown)" if shown < len(x) else ""
    legend = f"{title}{note}; captions: true class, then predicted class (red)".lstrip("; ")
    return _label(stack(rows), legend)


def filter_preview(testset: TestSet, n: int = 4, seed: int = 0, height: int = 160) -> Image.Image:
    """n photos of a loaded test set, one per row: the whole photo unfiltered and filtered (blurred
    at full resolution, then shrunk to `height` px for display), a height x height centre detail at
    full resolution (1:1 pixels, where the blur shows), and the 32x32 images the model sees (x4,
    nearest), made square as the test set was (its `fit`). The photos are read again at full size."""
    files = list(testset.paths)
    random.Random(seed).shuffle(files)
    rows = []
    for rel in files:
        if len(rows) == n:
            break
        try:
            photo = load_photo(Path(testset.root) / rel)
        except UnreadablePhoto:
            continue
        rows.append(_preview_row(rel, photo, testset.fit, height))
    return stack(rows, gap=12)


def _preview_row(rel: str, photo: Image.Image, fit: str, height: int) -> Image.Image:
    blurred = study_blur(photo)
    s = blur_kernel_size(photo.width)
    k = blur_kernel_length(s)
    thumb = (round(photo.width * height / photo.height), height)
    left, top = max(0, (photo.width - height) // 2), max(0, (photo.height - height) // 2)
    box = (left, top, left + min(height, photo.width), top + min(height, photo.height))
    cells = [
        _label(photo.resize(thumb, Image.Resampling.LANCZOS), "photo"),
        _label(blurred.resize(thumb, Image.Resampling.LANCZOS), "filtered"),
        _label(photo.crop(box), "1:1 detail"),
        _label(blurred.crop(box), "1:1 filtered"),
        _label(prepare_photo(photo, False, fit).resize((128, 128), Image.Resampling.NEAREST), "32x32"),
        _label(prepare_photo(photo, True, fit).resize((128, 128), Image.Resampling.NEAREST), "32x32 filtered"),
    ]
    blur = f"s={s}, kernel {k}x{k}, sigma={blur_sigma(k):.2f}" if s > 1 else f"s={s}: no blur"
    label = f"{rel}  {photo.width}x{photo.height} px  {blur}"
    return _label(stack(cells, horizontal=True), label)


RESERVED_NAMES = ("validation", "robustness")  # other results in RUN_DIR/eval/


def photo_set_name(folder: str | Path, filtered: bool, name: str | None = None) -> str:
    """The <name> of eval/<name>.json for a photo set: `name` if given (checked), else the folder's name
    made file-safe, plus "_filtered" for the filtered set; so two photo sets keep two results. The
    study's own results are "test" and "test_filtered" (what compare and report show)."""
    if name is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name in RESERVED_NAMES:
            raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (not "
                            f"{' or '.join(RESERVED_NAMES)}, which name other results)")
        return name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(folder).resolve().name).strip("._-") or "photos"
    base = f"{base}_photos" if base in RESERVED_NAMES else base
    return f"{base}_filtered" if filtered else base
