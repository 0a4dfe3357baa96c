"""The study at a glance, read from the run directories as they are (nothing is trained, evaluated or
written): Table 2's rows, accuracy curves, confusion matrices, robustness figures, and the pictures
`visualize`/`reproduce` left in RUN_DIR/viz/ and eval/. The figures are the report's own functions."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from PIL import Image

from cifarlab import CLASSES
from cifarlab.data.images import UnreadablePhoto, load_photo
from cifarlab.errors import UserError
from cifarlab.evaluate.compare import SETS, format_markdown, table2_rows
from cifarlab.evaluate.robustness import load_results
from cifarlab.evaluate.robustness_summary import pool
from cifarlab.pictures import figure_image
from cifarlab.report.figures import accuracy_curves, confusion_figure, lr_drop_epochs
from cifarlab.report.html import load_run
from cifarlab.report.robustness_figures import drawn
from cifarlab.rundir import RunDir

SET_TITLES = {"validation": "validation", "test": "photos", "test_filtered": "photos, blurred"}

Pictures = list[tuple[Image.Image, str]]  # (image, caption), what a gallery shows


class Study:
    """The runs' results as text and pictures, drawn on first use and kept (they do not change while
    the app runs; restart it after new evaluations)."""

    def __init__(self, runs: dict[str, Path]):
        self.runs = runs  # label -> run directory
        self._lock = threading.Lock()
        self._cache: dict[str, object] = {}

    def _once(self, key: str, make):
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def table2(self) -> str:
        return self._once("table2", lambda: table2_markdown(list(self.runs.values())))

    def curves(self) -> Image.Image | None:
        return self._once("curves", lambda: curves_image(self.runs))

    def robustness(self) -> Pictures:
        return self._once("robustness", lambda: robustness_images(list(self.runs.values())))

    def run_pictures(self, label: str) -> Pictures:
        if label not in self.runs:
            raise UserError(f"no model '{label}' (models: {', '.join(self.runs)})")
        # the saved PNGs can be large (a filter sheet: megapixels): read per request, not kept
        return self._once(f"run:{label}", lambda: confusion_images(self.runs[label], label)) \
            + saved_pictures(self.runs[label])


def table2_markdown(runs: list[Path]) -> str:
    """Table 2's rows for the loaded runs (runs of one preset pooled), ours beside the study's."""
    try:
        rows = table2_rows(runs)
    except UserError as e:
        return f"Table 2 cannot be read: {e}"
    note = ("Accuracy (%). Photos: the study's real-world test set as `cifarlab reproduce` or "
            "`evaluate --testset DIR --name test` scored it; — where a run has no such evaluation.")
    return note + "\n\n" + format_markdown(rows)


def curves_image(runs: dict[str, Path]) -> Image.Image | None:
    """Train and validation accuracy per epoch (history.csv), one panel per run, learning-rate drops dashed."""
    histories, drops = {}, {}
    for label, path in runs.items():
        try:
            run = load_run(path)
        except UserError:
            continue  # no or unreadable history.csv: no curve, the rest still shows
        histories[label] = run.history
        drops[label] = lr_drop_epochs(run.history) if run.cfg.schedule == "drops" else []
    return figure_image(accuracy_curves(histories, drops)) if histories else None


def confusion_images(run: Path, label: str) -> Pictures:
    """The confusion matrix of each evaluation the run has (validation, photos, blurred photos)."""
    out = []
    for name in SETS:
        path = RunDir(run).eval_json(name)
        try:
            report = json.loads(path.read_text())
            cm = report["confusion_matrix"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        acc = report.get("accuracy")
        title = f"{label}: {SET_TITLES[name]}" + (f", accuracy {acc:.1%}" if isinstance(acc, float) else "")
        out.append((figure_image(confusion_figure(cm, CLASSES, title)), f"confusion matrix, {SET_TITLES[name]} ({name})"))
    return out


def robustness_images(runs: list[Path]) -> Pictures:
    """Corruption and blur sweeps, sharpening, reliability diagrams from the runs' eval/robustness.json."""
    results = []
    for run in runs:
        try:
            res = load_results(run)
        except UserError:
            continue
        if res:
            results.append(res)
    return [(figure_image(fig), caption) for _, fig, caption in drawn(pool(results))] if results else []


def saved_pictures(run: Path) -> Pictures:
    """The PNGs already in RUN_DIR/viz/ (activations, filters, CAMs) and eval/ (misclassified photos),
    read through the hardened decoder (they are files on disk like any other)."""
    rd = RunDir(run)
    out = []
    for folder, pattern in ((rd.viz_dir, "*.png"), (rd.eval_dir, "*_misclassified.png")):
        for path in sorted(folder.glob(pattern)) if folder.is_dir() else []:
            try:
                out.append((load_photo(path), f"{folder.name}/{path.name}"))
            except UnreadablePhoto:
                continue
    return out
