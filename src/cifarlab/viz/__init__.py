"""See inside the networks: activation grids (the study's Appendix A), DeepDream-style filter images
(Appendix B), occlusion maps and class activation maps (its further work).

    from cifarlab.viz import visualize
    visualize("runs/imp2", "gradcam", image="photos/", out="gradcam.png")

Every kind works for the from-scratch models at 32 px and the MobileNets at 128 px; images are read as
`cifarlab evaluate --testset` reads them; a folder gives one sheet for many images.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from cifarlab.errors import UserError
from cifarlab.viz import activations, attribution, filters, sheet
from cifarlab.viz.inputs import Photos, from_testset, load_images
from cifarlab.viz.probe import Layer, Probe, load_probe

KINDS = ("activations", "filters", "occlusion", *attribution.CAMS)
CMAPS = {"activations": "inferno", "occlusion": "jet", **{k: "jet" for k in attribution.CAMS}}

__all__ = ["KINDS", "Photos", "Probe", "Layer", "visualize", "render", "load_images", "load_probe",
           "from_testset", "study_figures", "study_figures_all", "output_name"]


def output_name(kind: str) -> str:
    """RUN_DIR/viz/<this> by default; the report sorts viz/*.png into appendices by these prefixes."""
    return kind.replace("++", "_pp") + ".png"


def check_options(kind: str, *, steps: int = 128, channels: int = 32, keep: int = 16, max_images: int = 16,
                  **_: Any) -> None:
    if kind not in KINDS:
        raise UserError(f"unknown --kind '{kind}' (kinds: {', '.join(KINDS)})")
    for name, v in (("--steps", steps), ("--channels", channels), ("--keep", keep), ("--max-images", max_images)):
        if v < 1:
            raise UserError(f"{name} must be positive, got {v}")


def render(probes: list[Probe], kind: str, photos: Photos | None = None, *, layers: list[str] | None = None,
           top: bool = False, patch: int | None = None, stride: int | None = None, steps: int = 128,
           channels: int = 32, keep: int = 16, cmap: str | None = None, seed: int = 0, **_: Any) -> Image.Image:
    """The sheet for one model, or several side by side (--compare), as a PIL image."""
    if kind != "filters" and (photos is None or len(photos) == 0):
        raise UserError(f"--kind {kind} needs --image FILE_OR_DIR")
    chosen = check_render(probes, kind, layers, patch, stride, cmap, steps=steps, channels=channels, keep=keep)
    cmap = cmap or CMAPS.get(kind, "inferno")
    if kind == "filters":
        panels = [filters.panel(p, ls, channels, keep, steps, seed) for p, ls in zip(probes, chosen)]
        return sheet.stack(panels, horizontal=True, gap=24, line=sheet.LINE)
    if kind == "activations":
        per_image = [sheet.stack([activations.panel(p, x, n, lab, ls, top, cmap) for p, ls in zip(probes, chosen)],
                                 horizontal=True, gap=16)
                     for x, n, lab in zip(photos.x, photos.names, photos.labels)]
        cols = 1 if len(probes) > 1 else min(len(per_image), math.ceil(math.sqrt(len(per_image))), 4)
        return _grid(per_image, cols)
    panels = [attribution.panel(p, kind, photos, ls[0], patch, stride, cmap=cmap) for p, ls in zip(probes, chosen)]
    return sheet.stack(panels, horizontal=True, gap=24, line=sheet.LINE)


def check_render(probes: list[Probe], kind: str, layers: list[str] | None = None, patch: int | None = None,
                 stride: int | None = None, cmap: str | None = None, **options: Any) -> list[list[Layer]]:
    """Every option checked against the models before any work; returns each model's layers."""
    check_options(kind, **options)
    sheet.colormap(cmap or CMAPS.get(kind, "inferno"))
    if kind == "occlusion":
        for p in probes:
            attribution.patch_and_stride(p.input_size, patch, stride)
    return [_layers(p, kind, layers) for p in probes]


def _layers(probe: Probe, kind: str, names: list[str] | None) -> list[Layer]:
    if kind == "occlusion":
        if names:
            raise UserError("--layers does not apply to occlusion (it perturbs the input image)")
        return [probe.last()]
    if kind in attribution.CAMS:
        if names and len(names) > 1:
            raise UserError(f"--kind {kind} uses one layer, got {len(names)}: {', '.join(names)}")
        return [probe.layer(names[0]) if names else probe.last()]
    return probe.pick(names, 3 if kind == "filters" and probe.input_size > 32 else 4)


def _grid(panels: list[Image.Image], cols: int) -> Image.Image:
    rows = [sheet.stack(panels[i:i + cols], horizontal=True, gap=24) for i in range(0, len(panels), cols)]
    return sheet.stack(rows, gap=24)


def visualize(run_dir: str | Path, kind: str, image: str | Path | None = None, out: str | Path | None = None, *,
              compare: str | Path | None = None, checkpoint: str = "last", fit: str = "crop", filtered: bool = False,
              max_images: int = 16, **options: Any) -> Path:
    """Render `kind` for a run (and `compare`, side by side) on `image` (file or folder) and write the
    PNG atomically to `out` (default RUN_DIR/viz/<kind>.png). Options: see `render`. Returns the path."""
    check_options(kind, max_images=max_images, **options)
    run_dir = Path(run_dir)
    for run in [run_dir] + ([Path(compare)] if compare else []):
        if not (run / "config.yaml").is_file():
            raise UserError(f"{run}: not a run directory (no config.yaml)")
    out = Path(out) if out else run_dir / "viz" / output_name(kind)
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out}: is a folder (give a .png file name)")
    if not out.parent.is_dir() and not (out.parent == run_dir / "viz" and run_dir.is_dir()):
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if kind != "filters" and image is None:
        raise UserError(f"--kind {kind} needs --image FILE_OR_DIR")
    probes = [load_probe(run_dir, checkpoint)] + ([load_probe(compare, checkpoint)] if compare else [])
    check_render(probes, kind, **options)  # before reading any image
    photos = load_images(image, fit, filtered, max_images) if image is not None and kind != "filters" else None
    img = render(probes, kind, photos, **options)
    out.parent.mkdir(exist_ok=True)
    return sheet.save_png(img, out)


# ---------------------------------------------------------------- the study run's figures

STUDY_KINDS = ("occlusion", "gradcam", "gradcam++")  # Score-CAM costs a forward pass per channel: CLI only
STUDY_EXAMPLES = ("truck", "airplane")  # the study's Appendix A photos
STUDY_MAX_WRONG = 8


def study_figures(run_dir: str | Path, photos: Photos, *, steps: int = 40, quiet: bool = False) -> list[Path]:
    """The report's figures for one run, in RUN_DIR/viz/: activations of two example photos (a truck
    and an airplane, as in the study), filter images (few channels and steps: seconds), and occlusion
    and CAM sheets of up to 8 misclassified photos. Skipped when they are newer than last.pt."""
    from cifarlab import CLASSES

    run_dir = Path(run_dir)
    viz = run_dir / "viz"
    names = ["activations.png", "filters.png"] + [output_name(k) for k in STUDY_KINDS]
    if not (run_dir / "last.pt").is_file():
        raise UserError(f"{run_dir}: not a trained run directory (no last.pt)")
    last = (run_dir / "last.pt").stat().st_mtime
    if all((viz / n).is_file() and (viz / n).stat().st_mtime >= last for n in names[:2]):
        return []
    viz.mkdir(exist_ok=True)
    probe = load_probe(run_dir)
    written = []
    examples = [next((i for i, y in enumerate(photos.labels) if y == CLASSES.index(c)), None) for c in STUDY_EXAMPLES]
    examples = [i for i in examples if i is not None] or [0]
    written.append(sheet.save_png(render([probe], "activations", photos.take(examples)), viz / names[0]))
    tried = 8 if probe.input_size > 32 else 16  # a MobileNet step costs ~15x an IMP step
    written.append(sheet.save_png(render([probe], "filters", channels=tried, keep=8, steps=steps), viz / names[1]))
    with torch.no_grad():
        pred = torch.cat([probe.probs(probe.to_input(x)).argmax(1) for x in photos.x.split(64)])
    wrong = [i for i, (p, y) in enumerate(zip(pred.tolist(), photos.labels)) if y is not None and p != y]
    if len(wrong) > STUDY_MAX_WRONG:  # spread over the classes rather than the first class folder's
        wrong = [wrong[round(j * (len(wrong) - 1) / (STUDY_MAX_WRONG - 1))] for j in range(STUDY_MAX_WRONG)]
    for kind, name in zip(STUDY_KINDS, names[2:]):
        if wrong:
            patch = max(2, probe.input_size // 8)  # non-overlapping patches: 64 forward passes, not 225
            opts = {"patch": patch, "stride": patch} if kind == "occlusion" else {}
            written.append(sheet.save_png(render([probe], kind, photos.take(wrong), **opts), viz / name))
        else:
            (viz / name).unlink(missing_ok=True)  # an older model's misclassifications no longer apply
    if not quiet:
        print(f"{run_dir}: wrote {len(written)} figures to {viz} ({len(wrong)} misclassified shown)", file=sys.stderr)
    return written


def study_figures_all(run_dirs: list[Path], testset: Any = None, cifar: Any = None,
                      say: Callable[[str], None] = print) -> None:
    """`study_figures` for the first run of each preset (seeds add nothing to the pictures), on the test
    photos, or without a test set on the first 500 CIFAR-10 validation images."""
    if testset is not None:
        photos = from_testset(testset)
    elif cifar is not None:
        n = min(500, len(cifar.val_y))
        photos = Photos(cifar.val_x[:n].cpu(), cifar.val_y[:n].tolist(), [f"val/{i:05d}" for i in range(n)])
    else:
        return
    threads = torch.get_num_threads()
    # Small batches of small images: thread barriers cost more than they save, many times more when
    # another process keeps a core busy (measured on 2 cores: filter steps 5x slower with 2 threads).
    torch.set_num_threads(1)
    try:
        _each_preset(run_dirs, photos, say)
    finally:
        torch.set_num_threads(threads)


def _each_preset(run_dirs: list[Path], photos: Photos, say: Callable[[str], None]) -> None:
    from cifarlab.config import load_config

    seen: set[str] = set()
    for run in map(Path, run_dirs):
        preset = load_config(run / "config.yaml").preset or run.name
        if preset in seen:
            continue
        seen.add(preset)
        t = time.perf_counter()
        if study_figures(run, photos, quiet=True):
            say(f"{run}: visualisations in {run / 'viz'} ({time.perf_counter() - t:.0f} s)")
