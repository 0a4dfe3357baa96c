"""`cifarlab report`: one self-contained HTML page for a set of run directories.

Every image is embedded as a base64 data URI, so index.html alone can be mailed or archived; the same
PNGs are also written to figures/ beside it for papers and slides. The page is plain HTML with a little
CSS; the one inline script only reports broken images (for the browser test), nothing depends on it.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import re
import time
from html import escape as e
from pathlib import Path
from typing import Any, Iterable

import torch

from cifarlab import CLASSES, __version__
from cifarlab.config import Config, is_transfer
from cifarlab.data.augment import augment_config
from cifarlab.errors import UserError
from cifarlab.evaluate.compare import mean_std, table2_rows
from cifarlab.evaluate.testset import most_confused
from cifarlab.io import atomic_write, write_text
from cifarlab.models import build_model, layer_table
from cifarlab.pictures import save_png
from cifarlab.report.figures import accuracy_curves, confusion_figure, lr_drop_epochs
from cifarlab.rundir import RunDir

SETS = {"validation": "validation", "test": "test", "test_filtered": "test (filtered)"}
COMPACT_OVER = 30  # Table 1 rows; MobileNets have ~90, shown as head + tail
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2.2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:14px}
th,td{border:1px solid #ddd;padding:.2em .6em;text-align:left} th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums} td.study{color:#777}
tr.gap td{text-align:center;color:#777;font-style:italic} tfoot td{font-weight:600}
img{max-width:100%;height:auto} figure{margin:.5em 0 1.5em} figcaption{color:#555;font-size:13px}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start} .row>*{flex:1 1 420px;min-width:0}
.meta{color:#666;font-size:13px}
"""

# Counts images that failed to load into #image-check, so a headless browser's --dump-dom can see it.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const el = document.getElementById("image-check");
  el.dataset.total = imgs.length;
  el.dataset.broken = broken;
  el.textContent = `${imgs.length} images, ${broken} broken`;
});
</script>"""


@dataclasses.dataclass
class Run:
    path: Path
    cfg: Config
    history: list[dict[str, float]]
    evals: dict[str, dict[str, Any]]  # set name -> eval/<set>.json
    label: str = ""


def load_run(path: Path) -> Run:
    """A run directory's config, history and whatever eval/*.json it has; UserError if it is not one."""
    rd = RunDir(path)
    for f in (rd.config, rd.history):
        if not f.is_file():
            raise UserError(f"{rd.path}: not a run directory (no {f.name})")
    evals = {s: _read_json(rd.eval_json(s)) for s in SETS if rd.eval_json(s).is_file()}
    return Run(rd.path, rd.load_config(), _read_history(rd.history), evals)


def _read_history(path: Path) -> list[dict[str, float]]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [{k: float(v) for k, v in r.items()} for r in reader]
            missing = {"epoch", "lr", "train_acc", "val_acc"} - set(reader.fieldnames or [])
    except (OSError, ValueError, TypeError) as err:  # TypeError: a short row leaves None values
        raise UserError(f"{path}: cannot read history ({type(err).__name__}: {err})") from None
    if missing:
        raise UserError(f"{path}: not a training history (no column {', '.join(sorted(missing))})")
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read ({type(err).__name__})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object")
    return obj


def _label(runs: list[Run]) -> None:
    """Study names (IMP1) where unique, else name plus run directory; always unique."""
    names = [r.cfg.preset.upper() or r.path.name for r in runs]
    seen: set[str] = set()
    for i, (r, n) in enumerate(zip(runs, names)):
        label = f"{n} ({r.path.name})" if names.count(n) > 1 else n
        r.label = label if label not in seen else f"{label} #{i + 1}"
        seen.add(r.label)


class Images:
    """Writes each image to figures/ and returns the <figure> that embeds it as a data URI."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names: set[str] = set()
        self.count = 0

    def _path(self, name: str) -> Path:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
        base, i = name, 2
        while name in self.names:  # two runs' figures must never overwrite each other
            name, i = f"{base}-{i}", i + 1
        self.names.add(name)
        return self.folder / f"{name}.png"

    def _embed(self, data: bytes, caption: str) -> str:
        self.count += 1
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        return f'<figure><img src="{uri}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>'

    def figure(self, name: str, fig: Any, caption: str) -> str:
        path = self._path(name)
        save_png(fig, path)
        return self._embed(path.read_bytes(), caption)

    def file(self, name: str, src: Path, caption: str) -> str:
        try:
            data = Path(src).read_bytes()
        except OSError as err:
            raise UserError(f"{src}: cannot read image ({err.strerror})") from None
        if not data.startswith(PNG_MAGIC):
            raise UserError(f"{src}: not a PNG image")
        atomic_write(self._path(name), lambda f: f.write(data))
        return self._embed(data, caption)


def write_report(run_dirs: list[Path], out: Path, *, table2: list[dict[str, Any]] | None = None,
                 title: str = "CIFAR-10 CNN study: reproduction report", notes: Iterable[str] = (),
                 extra_images: dict[str, Path] | None = None) -> Path:
    """Write out/index.html (self-contained) and out/figures/*.png for `run_dirs`; returns index.html.

    `table2`: rows of cifarlab.evaluate.compare.table2_rows (accuracy in %, pooled over seeds);
    by default computed from the runs' eval/*.json.
    `extra_images`: 'augment_preview', 'filter_preview', or any other name -> PNG file.
    """
    if not run_dirs:
        raise UserError("report: no run directories given")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (the report needs a folder for index.html and figures/)")
    unique: dict[Path, Path] = {}
    for d in map(Path, run_dirs):
        unique.setdefault(d.resolve(), d)  # the same run twice is one run
    runs = [load_run(d) for d in unique.values()]  # all input is checked before anything is written
    extra = {k: Path(v) for k, v in (extra_images or {}).items()}
    for k, p in extra.items():
        if not p.is_file():
            raise UserError(f"{p}: image '{k}' not found")
        with open(p, "rb") as f:
            if f.read(8) != PNG_MAGIC:
                raise UserError(f"{p}: image '{k}' is not a PNG")
    _label(runs)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out}: cannot create the report folder ({err.strerror})") from None

    imgs = Images(out / "figures")
    body = [
        _header(title, runs, list(notes)),
        _table1(runs),
        _table2(table2 if table2 is not None else table2_rows([r.path for r in runs]),
                no_test=not any(k.startswith("test") for r in runs for k in r.evals)),
        _curves(runs, imgs),
        _extras(runs, extra, imgs),
        _per_model(runs, imgs),
        _visualisations(runs, imgs),
        _robustness(runs, imgs),
        f'<p class="meta" id="image-check" data-total="{imgs.count}">{imgs.count} images</p>',
    ]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{CSS}</style></head>\n'
            f'<body>\n{"".join(s + chr(10) for s in body if s)}{IMAGE_CHECK}\n</body></html>\n')
    index = out / "index.html"
    write_text(index, page)
    return index


def _header(title: str, runs: list[Run], notes: list[str]) -> str:
    made = f"Generated {time.strftime('%Y-%m-%d %H:%M')} by cifarlab {__version__} from {len(runs)} run(s): "
    made += ", ".join(f"{r.label} = {r.path.name}" if r.label != r.path.name else r.label for r in runs)
    items = "".join(f"<li>{e(n)}</li>" for n in notes)
    return f"<h1>{e(title)}</h1>\n<p class=\"meta\">{e(made)}</p>" + (f"\n<ul>{items}</ul>" if items else "")


def _table(head: list[str], rows: list[list[str] | str], num_from: int, foot: list[list[str]] = ()) -> str:
    """Cells are plain text (escaped here); columns from `num_from` are right-aligned numbers;
    a row given as a str spans the table (Table 1's "... more layers")."""
    def tr(cells: list[str], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}{' class=num' if i >= num_from and tag == 'td' else ''}>{e(str(c))}</{tag}>"
                                for i, c in enumerate(cells)) + "</tr>"
    body = "".join(f'<tr class="gap"><td colspan="{len(head)}">{e(r)}</td></tr>' if isinstance(r, str) else tr(r)
                   for r in rows)
    tfoot = f"<tfoot>{''.join(tr(r) for r in foot)}</tfoot>" if foot else ""
    return f"<table><thead>{tr(head, 'th')}</thead><tbody>{body}</tbody>{tfoot}</table>"


def _arch_key(cfg: Config) -> tuple:
    """Runs with the same key have the same Table 1 (IMP1 and IMP2 share a network)."""
    if is_transfer(cfg):
        return cfg.model, cfg.alpha, cfg.input_size, cfg.head, cfg.dropout, cfg.trainable
    return (cfg.model,)


def _table1(runs: list[Run]) -> str:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(_arch_key(r.cfg), []).append(r)
    parts = []
    for group in groups.values():
        cfg = group[0].cfg
        with torch.random.fork_rng(devices=[]):  # build_model seeds the global RNG; leave the caller's alone
            model = build_model(cfg, torch.device("cpu"), pretrained=False)
        size = cfg.input_size
        # empty containers (MNET1's Sequential of no trainable units, the flatten head's Identity) are no layers
        rows: list[Any] = [list(r) for r in layer_table(model, (3, size, size))
                           if r[0] not in ("Sequential", "Identity")]
        total = sum(r[2] for r in rows)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if len(rows) > COMPACT_OVER:
            rows = rows[:5] + [f"… {len(rows) - 13} more layers …"] + rows[-8:]
        shown = [r if isinstance(r, str) else [r[0], r[1], f"{r[2]:,}"] for r in rows]
        foot = [["Total (incl. batch-norm statistics)", "", f"{total:,}"], ["Trainable", "", f"{trainable:,}"]]
        used = ", ".join(r.label for r in group)
        parts.append(f"<div><h3>{e(cfg.model)} <span class=\"meta\">({e(used)}; input {size}×{size}×3)</span></h3>"
                     + _table(["Layer type", "Output shape (H, W, C)", "Params"], shown, 2, foot) + "</div>")
    return ("<h2>Table 1. Architectures</h2>\n<p class=\"meta\">Generated from the code (every leaf module, in forward "
            "order); MobileNets shortened to their first and last layers.</p>\n"
            f"<div class=\"row\">{''.join(parts)}</div>")


def _pct(v: float | None, std: float | None = None, missing: str = "—") -> str:
    """Values in % (compare.table2_rows' units)."""
    if v is None:
        return missing
    return mean_std(v, std)


def _table2(rows: list[dict[str, Any]], no_test: bool) -> str:
    """Rows from cifarlab.evaluate.compare.table2_rows: % values, pooled over seeds."""
    head = ("<tr><th rowspan=2>Model</th><th rowspan=2>Runs</th>"
            "<th colspan=2>Validation</th><th colspan=2>Test</th><th colspan=2>Test (filtered)</th></tr>"
            "<tr>" + "<th>ours</th><th>study</th>" * 3 + "</tr>")
    body = []
    for r in rows:
        cells = [f"<td>{e(str(r['model']))}</td>", f"<td class=num>{e(str(r['n_runs']))}</td>"]
        for key in SETS:
            ours = _pct(r[key], r.get(f"{key}_std"), "no test set" if no_test and key != "validation" else "—")
            cells += [f"<td class=num>{e(ours)}</td>", f"<td class=\"num study\">{e(_pct(r.get(f'study_{key}')))}</td>"]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ("<h2>Table 2. Accuracy (%)</h2>\n<p class=\"meta\">Validation is the CIFAR-10 test split; test is the "
            "real-world photo set, unfiltered and with the study's size-dependent Gaussian blur. The study's "
            "figures are from its Table 2.</p>\n"
            f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>")


def _curves(runs: list[Run], imgs: Images) -> str:
    parts = []
    for name, caption, group in (
        ("fig3_accuracy_from_scratch", "Figure 3. Accuracy during training, models trained from scratch",
         [r for r in runs if not is_transfer(r.cfg)]),
        ("fig4_accuracy_mobilenets", "Figure 4. Accuracy during training, MobileNets (transfer learning)",
         [r for r in runs if is_transfer(r.cfg)]),
    ):
        if group:
            # a per-step schedule (the fast recipe) changes lr every epoch: no drops to mark
            drops = {r.label: lr_drop_epochs(r.history) if r.cfg.schedule == "drops" else [] for r in group}
            fig = accuracy_curves({r.label: r.history for r in group}, drops)
            parts.append(imgs.figure(name, fig, caption + "; dashed lines: learning-rate drops (from history.csv)"))
    return "<h2>Accuracy curves</h2>\n" + "\n".join(parts)


def _extras(runs: list[Run], extra: dict[str, Path], imgs: Images) -> str:
    parts = []
    augmented = [r.label for r in runs if augment_config(r.cfg).enabled]
    if "augment_preview" in extra:
        used = f"used by {', '.join(augmented)}" if augmented else "used by none of these runs"
        parts.append("<h2>Augmentation preview</h2>\n" + imgs.file(
            "augment_preview", extra["augment_preview"], f"Originals (left) and augmented copies; augmentation {used}"))
    if "filter_preview" in extra:
        parts.append("<h2>Test set: unfiltered vs filtered</h2>\n" + imgs.file(
            "filter_preview", extra["filter_preview"], "Test images before and after the size-dependent Gaussian blur"))
    others = {k: p for k, p in extra.items() if k not in ("augment_preview", "filter_preview")}
    if others:
        parts.append("<h2>Other figures</h2>\n" + "\n".join(imgs.file(k, p, k) for k, p in others.items()))
    return "\n".join(parts)


def _skipped(report: dict[str, Any]) -> str:
    n = report.get("n_skipped") or len(report.get("skipped") or [])
    if not n:
        return ""
    items = report.get("skipped") or []
    items = items.items() if isinstance(items, dict) else items
    shown = "".join(f"<li>{e(_plain(s))}</li>" for s in list(items)[:20])
    return f"<details><summary>{n} file(s) skipped (unreadable or unusable)</summary><ul>{shown}</ul></details>"


def _plain(item: Any) -> str:
    """A skipped entry as "path: reason", whether it is stored as a dict, a pair or a string."""
    if isinstance(item, dict):
        item = list(item.values())
    return ": ".join(str(x) for x in item) if isinstance(item, (list, tuple)) else str(item)


def _per_model(runs: list[Run], imgs: Images) -> str:
    parts = ["<h2>Per model: confusion matrices and misclassified images</h2>"]
    for r in runs:
        epochs = int(r.history[-1]["epoch"]) if r.history else 0
        minutes = sum(h.get("seconds", 0.0) for h in r.history) / 60
        subset = f", training subset {r.cfg.train_subset:,} images" if r.cfg.train_subset else ""
        parts.append(f"<h3>{e(r.label)}</h3>\n<p class=\"meta\">{e(str(r.path))}: {e(r.cfg.description)}; "
                     f"{epochs} epoch(s){e(subset)}, {minutes:.1f} min training</p>")
        if not r.evals:
            parts.append("<p>No evaluation yet (<code>cifarlab evaluate</code> writes eval/).</p>")
        for s, rep in r.evals.items():
            parts.append(_eval_block(r, s, rep, imgs))
    return "\n".join(parts)


def _eval_block(r: Run, s: str, rep: dict[str, Any], imgs: Images) -> str:
    name = SETS[s]
    classes = list(rep.get("classes") or CLASSES)
    acc, n = rep.get("accuracy"), rep.get("n")
    ckpt = f" ({rep['checkpoint']}.pt)" if rep.get("checkpoint") else ""
    line = f"{name}: {_pct(acc * 100)} % of {n} images{ckpt}" if acc is not None else f"{name}: no accuracy recorded"
    figs = []
    if rep.get("confusion_matrix"):
        fig = confusion_figure(rep["confusion_matrix"], classes, f"{r.label}: {name}")
        figs.append(imgs.figure(f"{r.label}_confusion_{s}", fig, f"{r.label}, {name}: confusion matrix "
                                "(counts; colour = fraction of the true class)"))
    mis = RunDir(r.path).eval_dir / f"{s}_misclassified.png"
    if mis.is_file():
        figs.append(imgs.file(f"{r.label}_misclassified_{s}", mis, f"{r.label}, {name}: misclassified images"))
    confused = [[t, p, str(n)] for t, p, n in most_confused(rep["confusion_matrix"], classes)] \
        if rep.get("confusion_matrix") else []
    table = _table(["True", "Predicted as", "Count"], confused, 2) if confused else ""
    return (f"<h4>{e(line)}</h4>\n{_skipped(rep)}\n<div class=\"row\">{''.join(figs)}</div>\n"
            + (f"<p class=\"meta\">Most confused pairs ({e(name)}):</p>\n{table}" if table else ""))


# RUN_DIR/viz/<prefix>*.png (written by `cifarlab visualize` or the study run) -> report section
APPENDICES = [
    ("A", "Appendix A. Activations", ("activations",),
     "16 channels of about four activation layers for the same photos, nearest the input on top; colour from "
     "0 (black: inactive) to the layer's largest value. The study compared MNET2 with IMP2 this way."),
    ("B", "Appendix B. Filter images", ("filters",),
     "DeepDream-style activation maximisation: images grown from grey that excite one channel of a conv "
     "layer most (Lucid's recipe); the channels with the highest final activation, layers split by thin lines."),
    ("C", "Appendix C. Where the models look: misclassified test photos", ("occlusion", "gradcam", "scorecam"),
     "Occlusion: the drop in the true class's probability as a grey patch covers each region. Grad-CAM and "
     "Grad-CAM++ on the last activation layer, for the predicted and the true class. The study proposed "
     "these as further work to see whether a model learns the object or its background."),
]


def _appendix(stem: str) -> str:
    return next((key for key, _, prefixes, _ in APPENDICES if stem.startswith(prefixes)), "other")


def _visualisations(runs: list[Run], imgs: Images) -> str:
    """RUN_DIR/viz/**/*.png of every run, sorted into Appendix A, B and C by file name; others last."""
    found: dict[str, list[str]] = {}
    for key, _, _, _ in APPENDICES:
        for r in runs:  # appendix by appendix, runs side by side within each
            for p in sorted(RunDir(r.path).viz_dir.rglob("*.png")):
                if _appendix(p.stem) == key:
                    found.setdefault(key, []).append(_viz_figure(r, p, imgs))
    for r in runs:
        for p in sorted(RunDir(r.path).viz_dir.rglob("*.png")):
            if _appendix(p.stem) == "other":
                found.setdefault("other", []).append(_viz_figure(r, p, imgs))
    if not found:
        return ""
    parts = ["<h2>Visualisations</h2>"]
    for key, title, _, text in [*APPENDICES, ("other", "Other visualisations", (), "")]:
        if key in found:
            parts.append(f"<h3>{e(title)}</h3>\n" + (f'<p class="meta">{e(text)}</p>\n' if text else "")
                         + f'<div class="row">{"".join(found[key])}</div>')
    return "\n".join(parts)


def _viz_figure(r: Run, p: Path, imgs: Images) -> str:
    rel = p.relative_to(r.path).as_posix()
    return imgs.file(f"{r.label}_{rel[:-4]}", p, f"{r.label}: {rel}")


def _robustness(runs: list[Run], imgs: Images) -> str:
    """Corruption sweeps, the blur hypothesis and calibration from RUN_DIR/eval/robustness.json
    (`cifarlab robustness`), runs of one preset pooled as mean ± std."""
    from cifarlab.evaluate import robustness as rb
    from cifarlab.report.robustness_figures import drawn

    results = [res for r in runs if (res := rb.load_results(r.path))]
    if not results:
        return ""
    pooled = rb.pool(results)
    first = results[0]
    c, b = first.get("corruptions") or {}, first.get("blur") or {}
    parts = ["<h2>Robustness</h2>", f"<p class=\"meta\">Validation: {e(str(c.get('n', '—')))} images "
             f"({e(c.get('subset', 'no corruption sweep'))}); corruptions after {e(rb.SOURCE)}. Real photos: "
             f"{e(str(b.get('n', '—')))} from {e(b.get('testset', 'no test set'))}. Accuracy and ECE in %, mean ± std "
             f"over runs of a preset where there are several.</p>"]
    for rows, title in ((rb.corruption_rows(pooled), "Accuracy under corruption, averaged over severities"),
                        (rb.summary_rows(pooled), "Summary: corruptions, photos, calibration")):
        if rows and len(rows[0]) > 3:
            parts.append(f"<h3>{e(title)}</h3>" + _table(list(rows[0]), [[str(v) for v in r.values()] for r in rows], 1))
    verdicts = [v for r in rb.RESIZES if (v := rb.blur_verdict(pooled, r))]
    if verdicts:
        parts.append("<h3>The blur hypothesis</h3>" + "".join(f"<p>{e(v)}</p>" for v in verdicts))
    elif b:
        parts.append("<p>The blur verdict compares from-scratch models with MobileNets: it needs runs of both.</p>")
    cal = first.get("calibration")
    if cal:
        parts.append(f"<p class=\"meta\">Temperature scaling: {e(cal['split'])}.</p>")
    for name, fig, caption in drawn(pooled):
        parts.append(imgs.figure(f"robustness_{name}", fig, caption))
    return "\n".join(parts)
