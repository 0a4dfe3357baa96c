"""The study's four findings, checked against our Table 2: each holds, does not hold, or is not clear
from these runs (the difference is within two standard errors).

(a) IMP >> BASE (validation);  (b) augmentation helps IMP (IMP2 vs IMP1, validation and photos);
(c) MobileNets are more robust on unfiltered real photos (smaller drop from validation to photos);
(d) the blur filter helps from-scratch models more than MobileNets (filtered minus unfiltered photos).

Standard errors: a binomial one for each accuracy (sqrt(p(1-p)/n) on n images), widened by the spread
across seeds where a row pools several runs (std / sqrt(runs)); a difference's is the root of the sum of
squares (conservative: the models are scored on the same images).
"""

from __future__ import annotations

import math
from typing import Any

from cifarlab.evaluate.compare import mean_std

STRONG = 10.0  # points: what ">>" means for finding (a)


def _acc(row: dict[str, Any], name: str, n: int) -> tuple[float, float] | None:
    """(accuracy %, its standard error %) of one Table 2 cell, or None where it was not measured."""
    p = row.get(name)
    if p is None or not n:
        return None
    se = math.sqrt(max(p * (100 - p), 0.0) / n)
    std = row.get(f"{name}_std")
    if std:
        se = math.sqrt(se ** 2 + std ** 2 / row.get("n_runs", 1))
    return p, se


def _mean(values: list[tuple[float, float]]) -> tuple[float, float]:
    return sum(v for v, _ in values) / len(values), math.sqrt(sum(s ** 2 for _, s in values)) / len(values)


def _verdict(diff: float, se: float, margin: float = 0.0) -> str:
    """holds when diff - margin is above two standard errors, does not hold when below minus two."""
    if diff - margin > 2 * se:
        return "holds"
    if diff - margin < -2 * se:
        return "does not hold"
    return "not clear"


def check_findings(rows: list[dict[str, Any]], n_val: int, n_test: int) -> list[dict[str, str]]:
    """One dict per finding (id, claim, ours, verdict) from Table 2 rows (cifarlab.evaluate.compare)."""
    by = {r.get("row") or r["preset"]: r for r in rows}
    cell = lambda key, name, n: _acc(by[key], name, n) if key in by else None
    out = []

    base, imps = cell("base", "validation", n_val), [cell(k, "validation", n_val) for k in ("imp1", "imp2")]
    if base and all(imps):
        worst = min(imps)
        d = worst[0] - base[0]
        out.append({"id": "a", "claim": f"IMP >> BASE (each IMP at least {STRONG:.0f} points above BASE, validation)",
                    "ours": f"IMP1 {imps[0][0]:.1f}, IMP2 {imps[1][0]:.1f} vs BASE {base[0]:.1f} %: +{d:.1f} points "
                    "for the weaker IMP", "verdict": _verdict(d, math.hypot(worst[1], base[1]), STRONG)})

    parts = []
    for name, n in (("validation", n_val), ("test", n_test)):
        one, two = cell("imp1", name, n), cell("imp2", name, n)
        if one and two:
            parts.append((name, two[0] - one[0], math.hypot(one[1], two[1])))
    if parts:
        # the sets that tell (outside two standard errors) decide; if they disagree, it is not clear
        clear = {_verdict(d, se) for _, d, se in parts} - {"not clear"}
        verdict = clear.pop() if len(clear) == 1 else "not clear"
        out.append({"id": "b", "claim": "augmentation helps IMP (IMP2 above IMP1)",
                    "ours": ", ".join(f"{name} {mean_std(d, se, signed=True)} points" for name, d, se in parts),
                    "verdict": verdict})

    def drop(key: str) -> tuple[float, float] | None:
        val, test = cell(key, "validation", n_val), cell(key, "test", n_test)
        return (val[0] - test[0], math.hypot(val[1], test[1])) if val and test else None

    def gain(key: str) -> tuple[float, float] | None:
        raw, blurred = cell(key, "test", n_test), cell(key, "test_filtered", n_test)
        return (blurred[0] - raw[0], math.hypot(raw[1], blurred[1])) if raw and blurred else None

    contrasts = (("c", drop, "MobileNets are more robust on unfiltered real photos (smaller drop from validation to "
                  "photos than the from-scratch models)", "mean drop {:.1f} points from scratch vs {:.1f} for MobileNets"),
                 ("d", gain, "the blur filter helps from-scratch models more than MobileNets (filtered minus "
                  "unfiltered photo accuracy)", "mean gain {:+.1f} points from scratch vs {:+.1f} for MobileNets"))
    for key, diff, claim, ours in contrasts:
        scratch = [d for d in map(diff, ("base", "imp1", "imp2")) if d]
        mnets = [d for d in map(diff, ("mnet1", "mnet2")) if d]
        if scratch and mnets:
            (a, sa), (b, sb) = _mean(scratch), _mean(mnets)
            out.append({"id": key, "claim": claim, "ours": ours.format(a, b), "verdict": _verdict(a - b, math.hypot(sa, sb))})
    return out


def format_findings(findings: list[dict[str, str]]) -> str:
    lines = ["| Finding | Ours | Verdict |", "|---|---|---|"]
    lines += [f"| ({f['id']}) {f['claim']} | {f['ours']} | {f['verdict']} |" for f in findings]
    return "\n".join(lines)
