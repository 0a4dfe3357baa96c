"""The robustness figures: corruption and blur sweeps, sharpening, reliability diagrams, pooled over seeds.
The only place they are drawn: for the report page, and as PNGs beside `cifarlab robustness`'s tables.

Built like `report.figures`: matplotlib's object API (`Figure`, Agg canvas via `save_png`), never pyplot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cifarlab.data.corruptions import SEVERITY, SHARPEN_AMOUNTS, SHARPEN_SIGMA
from cifarlab.data.photo_sweep import BLUR_LEVELS, RESIZES, level_name
from cifarlab.evaluate.robustness_summary import Pooled, fmt, pool
from cifarlab.pictures import save_png


def _figure(n_panels: int, cols: int, w: float = 3.6, h: float = 2.9) -> tuple[Figure, np.ndarray]:
    """A grid of n_panels axes (flat), the unused ones hidden."""
    cols = min(cols, n_panels)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(w * cols, h * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _line(ax: Axes, p: Pooled, xs: list[float], keys: list[str], **kw) -> None:
    pts = [(x, p.mean[k], p.std.get(k, 0.0)) for x, k in zip(xs, keys) if k in p.mean]
    if pts:
        x, y, e = zip(*pts)
        ax.errorbar(x, [v * 100 for v in y], yerr=[v * 100 for v in e] if p.n_runs > 1 else None,
                    marker="o", ms=3, capsize=2, ls="--" if p.transfer else "-",
                    label=f"{p.label}" + (f" (n={p.n_runs})" if p.n_runs > 1 else ""), **kw)


def corruption_figure(pooled: list[Pooled]) -> Figure:
    names = sorted({k.split("/")[1] for p in pooled for k in p.mean if k.startswith("c/") and "/mean/" not in k
                    and k.split("/")[1] != "mean"}, key=list(SEVERITY).index)
    fig, axes = _figure(len(names) + 1, 4)
    for ax, name in zip(axes, [*names, "mean"]):
        for p in pooled:
            _line(ax, p, list(range(6)), ["clean"] + [f"c/{name}/{s}" for s in range(1, 6)])
        ax.set(title=name.replace("_", " ") if name != "mean" else "mean over corruptions", xlabel="severity "
               "(0 = clean)", ylabel="accuracy (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def blur_figure(pooled: list[Pooled]) -> Figure:
    resizes = [r for r in RESIZES if any(f"blur/{r}/0" in p.mean for p in pooled)]
    fig, axes = _figure(len(resizes), 3, 4.4, 3.4)
    xs = list(BLUR_LEVELS)
    for ax, r in zip(axes, resizes):
        for p in pooled:
            _line(ax, p, xs, [f"blur/{r}/{level_name(v)}" for v in xs])
            f = p.mean.get("study_fraction")
            if f is not None and f"blur/{r}/study" in p.mean:
                ax.plot([f], [p.mean[f"blur/{r}/study"] * 100], marker="*", ms=11, color=ax.lines[-1].get_color(),
                        ls="none")
        f = next((p.mean["study_fraction"] for p in pooled if "study_fraction" in p.mean), None)
        if f:
            ax.axvline(f, color="grey", ls=":", lw=1, label="study's rule (median σ/w; ★ exact)")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(-1e-4, max(xs) * 1.15)
        ax.set(title=f"resize: {r}", xlabel="Gaussian σ / photo width (blur before resizing)",
               ylabel="accuracy (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
    if resizes:
        axes[0].legend(fontsize="small")
    return fig


def sharpen_figure(pooled: list[Pooled]) -> Figure:
    fig, axes = _figure(1, 1, 4.6, 3.4)
    for p in pooled:
        _line(axes[0], p, list(SHARPEN_AMOUNTS), [f"sharpen/{a:g}" for a in SHARPEN_AMOUNTS])
    axes[0].set(title=f"CIFAR validation, unsharp mask (σ = {SHARPEN_SIGMA:g} px)", xlabel="sharpening amount "
                "(0 = none)", ylabel="accuracy (%)", ylim=(0, 100))
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def reliability_figure(pooled: list[Pooled]) -> Figure:
    ps = [p for p in pooled if p.bins]
    fig, axes = _figure(max(len(ps), 1), 4, 3.3, 3.3)
    for ax, p in zip(axes, ps):
        ax.plot([0, 1], [0, 1], color="grey", lw=1)
        for s, style in (("validation", "-"), ("realworld", "--")):
            for when, color in (("before", "C0"), ("after", "C1")):
                b = p.bins.get(s, {}).get(when)
                if not b:
                    continue
                pts = [(cs / n, c / n) for n, cs, c in zip(b["count"], b["conf_sum"], b["correct"]) if n]
                ax.plot(*zip(*pts), ls=style, marker="o", ms=3, color=color,
                        label=f"{s} {'raw' if when == 'before' else 'T-scaled'}")
        ece = " → ".join(fmt(p, f"ece/validation/{w}", 100, 1) for w in ("before", "after"))
        ax.set(title=f"{p.label}: val ECE {ece} %", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    if ps:
        axes[0].legend(fontsize="x-small")
    return fig


# (file name, figure function, a key that must exist, caption)


FIGURES = [
    ("corruption_sweep", corruption_figure, "clean", "Accuracy against corruption severity (CIFAR-10-C-style, "
     "validation subset); dashed: ImageNet-pretrained MobileNets; error bars: std over seeds"),
    ("blur_sweep", blur_figure, "study_fraction", "Real photos: accuracy against the Gaussian blur applied at full "
     "resolution before resizing to 32x32, σ relative to the photo's width; ★: the study's rule s = round(w/75)"),
    ("sharpen", sharpen_figure, "sharpen/0", "The other direction: CIFAR validation images sharpened (unsharp mask)"),
    ("reliability", reliability_figure, "T", "Reliability diagrams: accuracy against confidence (15 bins), on the "
     "validation eval half and the real photos, before and after temperature scaling"),
]


def drawn(pooled: list[Pooled]) -> list[tuple[str, Figure, str]]:
    """(file name, figure, caption) of every figure the pooled results have data for."""
    return [(name, make(pooled), caption) for name, make, needs, caption in FIGURES
            if any(needs in p.mean for p in pooled)]


def write_figures(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """The figures of the runs' robustness results as out/<name>.png; returns what was written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig, _ in drawn(pool(results)):
        save_png(fig, out / f"{name}.png")
        written.append(out / f"{name}.png")
    return written
