"""Table 2: validation / test / test-filtered accuracy per model, ours beside the study's.

Runs of the same preset (different seeds) are pooled: mean and standard deviation over seeds, so a
difference between models can be told from seed noise.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from cifarlab.errors import UserError
from cifarlab.io import write_csv, write_text
from cifarlab.rundir import RunDir

SETS = ("validation", "test", "test_filtered")
# The study's Table 2 (accuracy, %): validation, test, test (filtered).
STUDY_TABLE2 = {
    "base": (60.7, 30.5, 47.0),
    "imp1": (87.3, 54.5, 76.0),
    "imp2": (88.4, 58.5, 79.0),
    "mnet1": (73.4, 61.5, 69.0),
    "mnet2": (81.2, 75.0, 75.5),
}


def run_accuracies(run_dir: Path) -> dict[str, float | None]:
    """Accuracy per set from RUN_DIR/eval/<set>.json (None where that evaluation was not run);
    without eval/validation.json, validation is the final model's from metrics.json (the same model)."""
    rd = RunDir(run_dir)
    out: dict[str, float | None] = {}
    for name in SETS:
        path = rd.eval_json(name)
        if name == "validation" and not path.is_file():
            path = rd.metrics
        try:
            report = json.loads(path.read_text()) if path.is_file() else {}
            out[name] = report.get("accuracy", report.get("val_accuracy"))
        except (OSError, ValueError, AttributeError):
            raise UserError(f"{path}: unreadable evaluation file; run cifarlab evaluate again") from None
    return out


def table2_rows(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """One row per preset: mean and std (over seeds) of each set's accuracy, in %, with the study's. A
    preset that `extends` a study preset (e.g. imp2-laptop) is compared with that row of the study."""
    groups: dict[str, list[dict[str, float | None]]] = {}
    study_row: dict[str, str] = {}
    for run in run_dirs:
        cfg = RunDir(run).load_config()
        key = cfg.preset or cfg.model
        groups.setdefault(key, []).append(run_accuracies(run))
        study_row[key] = cfg.extends or key
    rows = []
    for preset, accs in groups.items():
        base = study_row[preset]
        label = base.upper() + (f" ({preset.removeprefix(base + '-')})" if preset != base else "")
        row: dict[str, Any] = {"model": label, "preset": preset, "row": base, "n_runs": len(accs)}
        for name in SETS:
            values = [a[name] * 100 for a in accs if a[name] is not None]
            row[name] = round(statistics.mean(values), 2) if values else None
            row[f"{name}_std"] = round(statistics.stdev(values), 2) if len(values) > 1 else None
        study = STUDY_TABLE2.get(base)
        for name, value in zip(SETS, study or (None,) * 3):
            row[f"study_{name}"] = value
        rows.append(row)
    return rows


def mean_std(mean: float, std: float | None = None, digits: int = 1, signed: bool = False) -> str:
    """"81.0 ± 1.4", or "81.0" without a std (one run): how every table and page shows pooled runs."""
    text = f"{mean:{'+' if signed else ''}.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


def _cell(row: dict[str, Any], name: str, no_test: bool) -> str:
    if row[name] is None:
        return "no test set" if no_test and name != "validation" else "—"
    return mean_std(row[name], row[f"{name}_std"])


def format_markdown(rows: list[dict[str, Any]], no_test: bool = False) -> str:
    lines = ["| Model | Runs | Validation | Test | Test (filtered) | Study: Validation | Study: Test | "
             "Study: Test (filtered) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        study = [f"{r[f'study_{n}']:.1f}" if r[f"study_{n}"] is not None else "—" for n in SETS]
        lines.append(f"| {r['model']} | {r['n_runs']} | " + " | ".join(_cell(r, n, no_test) for n in SETS)
                     + " | " + " | ".join(study) + " |")
    return "\n".join(lines)


def write_table2(rows: list[dict[str, Any]], out_dir: Path, no_test: bool = False) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "table2.md"
    write_text(md, "Accuracy (%); ours are mean ± std over runs where there are several.\n\n"
               + format_markdown(rows, no_test) + "\n")
    csv = out_dir / "table2.csv"
    write_csv(csv, rows)
    return md, csv
