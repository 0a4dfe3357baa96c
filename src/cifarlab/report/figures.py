"""The report's figures: accuracy curves (the study's Figures 3 and 4) and confusion matrices.

Built with matplotlib's object API (`Figure`, saved on an Agg canvas by `cifarlab.pictures.save_png`), never
pyplot: no global figure registry to leak memory and no GUI backend, so it works headless and in threads.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def lr_drop_epochs(history: list[dict[str, Any]]) -> list[float]:
    """Epochs after which the learning rate changed, read from the history's lr column (what ran,
    not what the config planned: a resumed run with a new --epochs may differ)."""
    return [float(a["epoch"]) for a, b in zip(history, history[1:]) if float(a["lr"]) != float(b["lr"])]


def accuracy_curves(histories: dict[str, list[dict[str, Any]]], lr_drops: dict[str, list[float]]) -> Figure:
    """One panel per model: train and validation accuracy per epoch, dashed lines where the learning
    rate dropped (drawn between the last epoch at the old rate and the first at the new one)."""
    n = max(len(histories), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.4 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, hist) in zip(axes, histories.items()):
        epochs = [float(r["epoch"]) for r in hist]
        marker = "o" if len(hist) <= 30 else None  # a 1-epoch run is otherwise invisible
        ax.plot(epochs, [float(r["train_acc"]) for r in hist], marker=marker, ms=3, label="train")
        ax.plot(epochs, [float(r["val_acc"]) for r in hist], marker=marker, ms=3, label="validation")
        for i, at in enumerate(lr_drops.get(name, [])):
            ax.axvline(at + 0.5, color="grey", ls="--", lw=1, label="lr drop" if i == 0 else None)
        final = f"val {float(hist[-1]['val_acc']):.1%}" if hist else "no epochs"
        ax.set(title=f"{name}: {final}", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    for ax in axes[len(histories):]:
        ax.set_visible(False)
    return fig


def confusion_figure(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Figure:
    """Counts in the cells; colour is the row-normalised fraction, so small test sets read like large ones."""
    cm = np.asarray(cm, dtype=np.int64)
    frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(5.6, 4.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(cm):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    return fig


def lr_find_figure(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], best_lr: float,
                   suggestion: float, title: str) -> Figure:
    """The lr range test (`cifarlab lr-find`): loss per batch (faint) and smoothed against a log lr axis,
    the lowest smoothed loss and the suggested rate (a tenth of it) marked."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(lrs, losses, color="tab:blue", alpha=0.25, lw=1, label="batch loss")
    ax.plot(lrs, smoothed, color="tab:blue", lw=2, label="smoothed")
    low = int(np.argmin(smoothed))
    ax.plot([best_lr], [smoothed[low]], "o", color="grey", label=f"lowest, lr {best_lr:.2g}")
    near = int(np.argmin(np.abs(np.log(np.asarray(lrs)) - math.log(suggestion))))
    ax.axvline(suggestion, color="tab:red", ls="--", lw=1)
    ax.plot([suggestion], [smoothed[near]], "o", color="tab:red", label=f"suggested, lr {suggestion:.2g}")
    ax.set_xscale("log")
    top = max(smoothed[:low + 1]) if low else smoothed[0]  # diverged tails would flatten the useful part
    ax.set_ylim(min(smoothed) - 0.05 * abs(top), top + 0.25 * (top - min(smoothed)) + 1e-6)
    ax.set(title=title, xlabel="learning rate (log scale)", ylabel="training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize="small")
    return fig
