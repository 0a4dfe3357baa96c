"""Time to accuracy of a `reproduce` output: each run's validation accuracy against its wall-clock minutes
(history.csv; the one-off MobileNet embedding counted at the start), with the study's Table 2 figure as
the target. Writes a PNG and a JSON with, per run, the final accuracy, the target and by how much it is
missed or beaten.

    python benchmarks/study_curves.py /work/study-laptop/runs/laptop --out benchmarks/results/laptop_curves
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cifarlab.evaluate.compare import STUDY_TABLE2  # noqa: E402
from cifarlab.rundir import RunDir  # noqa: E402


def curve(run: Path) -> tuple[list[float], list[float], list[float], dict]:
    rd = RunDir(run)
    rows = list(csv.DictReader(open(rd.history)))
    metrics = json.loads(rd.metrics.read_text())
    t, minutes, acc, train = metrics.get("embed_seconds", 0.0) / 60, [], [], []
    for r in rows:
        t += float(r["seconds"]) / 60
        minutes.append(round(t, 2))
        acc.append(float(r["val_acc"]) * 100)
        train.append(float(r["train_acc"]) * 100)
    return minutes, acc, train, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", help="a folder of run directories (OUT/runs/<profile>)")
    ap.add_argument("--out", default="benchmarks/results/study_curves", help="path prefix for .png and .json")
    args = ap.parse_args()
    runs = sorted(p for p in Path(args.runs).iterdir() if RunDir(p).history.is_file())
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.2), squeeze=False)
    summary = []
    for ax, run in zip(axes[0], runs):
        cfg = RunDir(run).load_config()
        row = cfg.extends or cfg.preset
        minutes, acc, train, metrics = curve(run)
        target = STUDY_TABLE2.get(row, (None,))[0]
        ax.plot(minutes, acc, marker=".", label="validation")
        ax.plot(minutes, train, ls=":", c="C1", label="train (augmented, dropout)")
        if target:
            ax.axhline(target, ls="--", c="grey", label=f"study {target}")
        ax.set_title(f"{cfg.preset}\n{acc[-1]:.1f} % in {minutes[-1]:.0f} min", fontsize=9)
        ax.set_xlabel("minutes (one core)")
        ax.set_ylim(max(0, min(acc + train) - 5), 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        summary.append({"run": run.name, "preset": cfg.preset, "row": row, "epochs": len(acc),
                        "minutes": minutes[-1], "val_accuracy": round(acc[-1], 2), "target": target,
                        "vs_target": round(acc[-1] - target, 2) if target else None,
                        "curve": [list(c) for c in zip(minutes, acc, train)]})
    axes[0][0].set_ylabel("validation accuracy (%)")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(f"{args.out}.png", dpi=110)
    Path(f"{args.out}.json").write_text(json.dumps(summary, indent=1) + "\n")
    for s in summary:
        gap = f"{s['vs_target']:+.1f} vs the study's {s['target']}" if s["target"] else ""
        print(f"{s['preset']}: {s['val_accuracy']:.1f} % after {s['epochs']} epochs, {s['minutes']:.0f} min {gap}")


if __name__ == "__main__":
    main()
