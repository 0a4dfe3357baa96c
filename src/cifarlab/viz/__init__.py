"""See inside the networks: activation grids (the study's Appendix A), DeepDream-style filter images
(Appendix B), occlusion maps and class activation maps (its further work).

    from cifarlab.viz import visualize
    visualize("runs/imp2", "gradcam", image="photos/", out="gradcam.png")

Every kind works for the from-scratch models at 32 px and the MobileNets at 128 px; images are read as
`cifarlab evaluate --testset` reads them; a folder gives one sheet for many images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image

from cifarlab.errors import UserError
from cifarlab.rundir import RunDir
from cifarlab.viz import activations, attribution, filters, sheet
from cifarlab.viz.inputs import Photos, from_testset, load_images
from cifarlab.viz.probe import Layer, Probe, load_probe

KINDS = ("activations", "filters", "occlusion", *attribution.CAMS)
CMAPS = {"activations": "inferno", "occlusion": "jet", **{k: "jet" for k in attribution.CAMS}}

__all__ = ["KINDS", "Photos", "Probe", "Layer", "visualize", "render", "load_images", "load_probe",
           "from_testset", "output_name"]


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
        if not RunDir(run).config.is_file():
            raise UserError(f"{run}: not a run directory (no config.yaml)")
    viz_dir = RunDir(run_dir).viz_dir
    out = Path(out) if out else viz_dir / output_name(kind)
    if out.exists() and out.is_dir():
        raise UserError(f"--out {out}: is a folder (give a .png file name)")
    if not out.parent.is_dir() and not (out.parent == viz_dir and run_dir.is_dir()):
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    if kind != "filters" and image is None:
        raise UserError(f"--kind {kind} needs --image FILE_OR_DIR")
    probes = [load_probe(run_dir, checkpoint)] + ([load_probe(compare, checkpoint)] if compare else [])
    check_render(probes, kind, **options)  # before reading any image
    photos = load_images(image, fit, filtered, max_images) if image is not None and kind != "filters" else None
    img = render(probes, kind, photos, **options)
    out.parent.mkdir(exist_ok=True)
    return sheet.save_png(img, out)

