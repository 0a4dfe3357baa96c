"""Calibration: expected calibration error (ECE), reliability-diagram bins, temperature scaling.

ECE (Guo et al. 2017, "On Calibration of Modern Neural Networks"): confidences (top softmax
probability) in 15 equal-width bins; ECE = sum over bins of (bin size / N) |accuracy - mean confidence|.

Temperature scaling fits one T > 0 (logits / T) by minimising the negative log-likelihood on a held-out
part of the validation set: SPLIT_SEED's permutation of the evaluated validation images, first half
fits T ("fit half"), ECE is reported on the second half ("eval half") before and after, and on the
real-world photos with the same T.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

N_BINS = 15
SPLIT_SEED = 0
SPLIT_NOTE = (f"T fitted on the first half of a fixed random permutation (torch seed {SPLIT_SEED}) of the "
              "evaluated validation images; ECE reported on the other half and on the real-world photos")


def reliability_bins(probs: torch.Tensor, y: torch.Tensor, n_bins: int = N_BINS) -> dict[str, list[float]]:
    """Per bin: count, sum of confidences, number correct (sums, so runs pool by adding)."""
    conf, pred = probs.max(1)
    idx = (conf * n_bins).long().clamp(max=n_bins - 1)  # bin i holds [i/n, (i+1)/n); 1.0 goes in the last
    return {
        "count": torch.bincount(idx, minlength=n_bins).tolist(),
        "conf_sum": torch.bincount(idx, conf.double(), minlength=n_bins).tolist(),
        "correct": torch.bincount(idx, (pred == y).double(), minlength=n_bins).tolist(),
    }


def ece_from_bins(bins: dict[str, list[float]]) -> float:
    n = sum(bins["count"])
    return sum(abs(c - s) for c, s in zip(bins["correct"], bins["conf_sum"])) / n if n else float("nan")


def ece(probs: torch.Tensor, y: torch.Tensor, n_bins: int = N_BINS) -> float:
    """Expected calibration error of softmax probabilities (N, K) for labels y."""
    return ece_from_bins(reliability_bins(probs, y, n_bins))


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """T minimising the NLL of softmax(logits / T): golden-section search on log T in [-3, 3]
    (the NLL is unimodal in T; deterministic, no learning rate to tune)."""
    logits, y = logits.double(), y.long()

    def nll(log_t: float) -> float:
        return F.cross_entropy(logits / math.exp(log_t), y).item()

    lo, hi, phi = -3.0, 3.0, (math.sqrt(5) - 1) / 2
    a, b = hi - phi * (hi - lo), lo + phi * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - phi * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + phi * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def split_halves(n: int, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, eval indices): a fixed permutation of range(n), first half and the rest."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2], perm[n // 2:]


def calibration_report(val_logits: torch.Tensor, val_y: torch.Tensor,
                       real_logits: torch.Tensor | None = None, real_y: torch.Tensor | None = None) -> dict[str, Any]:
    """T from the validation fit half; ECE and reliability bins before/after on the eval half and
    on the real-world set (if given)."""
    fit_i, eval_i = split_halves(len(val_y))
    t = fit_temperature(val_logits[fit_i], val_y[fit_i]) if len(fit_i) else 1.0
    out: dict[str, Any] = {"temperature": round(t, 4), "split": SPLIT_NOTE, "n_fit": len(fit_i),
                           "n_eval": len(eval_i), "n_bins": N_BINS, "sets": {}}
    sets = {"validation": (val_logits[eval_i], val_y[eval_i])}
    if real_logits is not None and real_y is not None and len(real_y):
        sets["realworld"] = (real_logits, real_y)
    for name, (logits, y) in sets.items():
        before, after = reliability_bins(logits.softmax(1), y), reliability_bins((logits / t).softmax(1), y)
        out["sets"][name] = {"n": len(y), "ece_before": round(ece_from_bins(before), 5),
                             "ece_after": round(ece_from_bins(after), 5), "bins_before": before, "bins_after": after}
    return out
