"""Pooling runs over seeds and the tables and verdict made from the pooled numbers.

Each run's results flatten to keys like "c/fog/3" or "blur/antialias/study", so every number pools
(mean ± std over the runs of one preset) the same way.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from cifarlab.data.corruptions import SEVERITY
from cifarlab.evaluate.compare import mean_std


def flatten(res: dict[str, Any]) -> dict[str, float]:
    """One run's numbers as flat keys, so any of them pools over seeds the same way."""
    f: dict[str, float] = {}
    c = res.get("corruptions")
    if c:
        f["clean"], f["mca"] = c["clean"], c["mean_corruption_accuracy"]
        sevs: dict[str, list[float]] = {}
        for n, per in c["accuracy"].items():
            for s, a in per.items():
                f[f"c/{n}/{s}"] = a
                sevs.setdefault(s, []).append(a)
            f[f"c/{n}/mean"] = statistics.mean(per.values())
        for s, accs in sevs.items():
            f[f"c/mean/{s}"] = statistics.mean(accs)
    for k, a in (res.get("sharpen") or {}).get("accuracy", {}).items():
        f[f"sharpen/{k}"] = a
    b = res.get("blur")
    if b:
        for r, per in b["accuracy"].items():
            for lv, a in per.items():
                f[f"blur/{r}/{lv}"] = a
                f[f"gain/{r}/{lv}"], f[f"gain_se/{r}/{lv}"] = b["gain_and_paired_se"][r][lv]
        f["study_fraction"] = b["study_sigma_fraction"]
    cal = res.get("calibration")
    if cal:
        f["T"] = cal["temperature"]
        for s, v in cal["sets"].items():
            f[f"ece/{s}/before"], f[f"ece/{s}/after"] = v["ece_before"], v["ece_after"]
    return {k: v for k, v in f.items() if v is not None}


@dataclass
class Pooled:
    label: str
    transfer: bool
    n_runs: int
    mean: dict[str, float]
    std: dict[str, float]  # only keys with 2+ runs
    bins: dict[str, dict[str, dict[str, list[float]]]]  # set -> before/after -> summed bins


def pool(results: list[dict[str, Any]]) -> list[Pooled]:
    """Group runs by preset (as compare.table2_rows does) and pool: mean, std over runs; reliability
    bins summed (exact pooling of the diagram)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r.get("preset") or r.get("run", "?"), []).append(r)
    out = []
    for preset, rs in groups.items():
        flats = [flatten(r) for r in rs]
        keys = [k for k in flats[0] if all(k in f for f in flats)]
        mean = {k: statistics.mean(f[k] for f in flats) for k in keys}
        std = {k: statistics.stdev(f[k] for f in flats) for k in keys if len(flats) > 1}
        out.append(Pooled(preset.upper(), bool(rs[0].get("transfer")), len(rs), mean, std, _sum_bins(rs)))
    return out


def _sum_bins(rs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    total: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in rs:
        for s, v in (r.get("calibration") or {}).get("sets", {}).items():
            for when in ("before", "after"):
                b = v[f"bins_{when}"]
                t = total.setdefault(s, {}).setdefault(when, {k: [0.0] * len(b[k]) for k in b})
                for k in b:
                    t[k] = [x + y for x, y in zip(t[k], b[k])]
    return total


def fmt(p: Pooled, key: str, scale: float = 100.0, digits: int = 1) -> str:
    if key not in p.mean:
        return "—"
    return mean_std(p.mean[key] * scale, p.std[key] * scale if key in p.std else None, digits)


# ---------------------------------------------------------------- the blur verdict

def blur_verdict(pooled: list[Pooled], resize: str) -> str | None:
    """Do from-scratch models gain more from blur than MobileNets? Gains in percentage points at the
    study's rule and at each group's best level, with standard errors."""
    def gains(p: Pooled, level: str) -> tuple[float, float] | None:
        k = f"gain/{resize}/{level}"
        if k not in p.mean:
            return None
        se = math.sqrt(p.mean.get(f"gain_se/{resize}/{level}", 0.0) ** 2 + p.std.get(k, 0.0) ** 2 / p.n_runs)
        return p.mean[k] * 100, se * 100

    pooled = [p for p in pooled if gains(p, "study") is not None]  # runs swept on photos at this resize
    levels = sorted({k.split("/")[2] for p in pooled for k in p.mean if k.startswith(f"gain/{resize}/")})
    groups = {"from scratch": [p for p in pooled if not p.transfer], "MobileNet": [p for p in pooled if p.transfer]}
    if not all(groups.values()) or not levels:
        return None
    parts, summary = [], {}
    for name, ps in groups.items():
        at_study = [gains(p, "study") for p in ps]
        best = [max(((gains(p, lv), lv) for lv in levels if lv != "0" and gains(p, lv)),
                    key=lambda t: t[0][0], default=(gains(p, "study"), "study")) for p in ps]
        summary[name] = statistics.mean(g[0] for g in at_study), statistics.mean(b[0][0] for b in best)
        parts.append(f"{name}: " + ", ".join(
            f"{p.label} {mean_std(*s, signed=True)} pp at the study's rule, best {b[0][0]:+.1f} pp at σ/w={b[1]}"
            for p, s, b in zip(ps, at_study, best)))
    ses = [gains(p, "study")[1] for p in pooled]
    d_study = summary["from scratch"][0] - summary["MobileNet"][0]
    d_best = summary["from scratch"][1] - summary["MobileNet"][1]
    noise = 2 * math.sqrt(statistics.mean(s ** 2 for s in ses))
    answer = "yes" if d_best > noise else ("no" if d_best < -noise else "not clearly")
    return (f"Resize '{resize}': {'; '.join(parts)}. From-scratch minus MobileNet mean gain: {d_study:+.1f} pp at "
            f"the study's rule, {d_best:+.1f} pp at the best level (noise level, 2 standard errors: ±{noise:.1f} pp). "
            f"Do from-scratch models gain more from blur? {answer}.")


# ---------------------------------------------------------------- tables

def summary_rows(pooled: list[Pooled]) -> list[dict[str, Any]]:
    rows = []
    for p in pooled:
        rows.append({"model": p.label, "runs": p.n_runs, "clean_%": fmt(p, "clean"), "mCA_%": fmt(p, "mca"),
                     "photos_%": fmt(p, "blur/antialias/0"), "photos_study_blur_%": fmt(p, "blur/antialias/study"),
                     "photos_nearest_%": fmt(p, "blur/nearest/0"),
                     "photos_nearest_study_blur_%": fmt(p, "blur/nearest/study"),
                     "T": fmt(p, "T", 1, 2), "ECE_val_%": fmt(p, "ece/validation/before"),
                     "ECE_val_T_%": fmt(p, "ece/validation/after"), "ECE_photos_%": fmt(p, "ece/realworld/before"),
                     "ECE_photos_T_%": fmt(p, "ece/realworld/after")})
    return rows


def long_rows(pooled: list[Pooled], prefix: str) -> list[dict[str, Any]]:
    """Every pooled key under prefix as rows: model, runs, setting, mean, std (accuracy as a fraction)."""
    return [{"model": p.label, "runs": p.n_runs, "setting": k[len(prefix):], "mean": round(v, 5),
             "std": round(p.std[k], 5) if k in p.std else ""}
            for p in pooled for k, v in p.mean.items() if k.startswith(prefix)]


def markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = list(rows[0])
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows])


def corruption_rows(pooled: list[Pooled]) -> list[dict[str, Any]]:
    """Model x corruption: accuracy (%) averaged over severities, with clean and mCA."""
    names = [n for n in SEVERITY if any(f"c/{n}/mean" in p.mean for p in pooled)]
    return [{"model": p.label, "runs": p.n_runs, "clean": fmt(p, "clean"),
             **{n.replace("_", " "): fmt(p, f"c/{n}/mean") for n in names}, "mCA": fmt(p, "mca")} for p in pooled]
