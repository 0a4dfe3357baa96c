"""The blur verdict on constructed pooled sweeps whose answer is known."""

import pytest

from cifarlab.evaluate.robustness_summary import Pooled, blur_verdict


def pooled(label: str, transfer: bool, gains: dict[str, tuple[float, float]], n_runs: int = 1,
           spread: float | None = None, resize: str = "antialias") -> Pooled:
    """A model's photo sweep: level -> (accuracy gain over no blur, its paired standard error), as
    fractions; `spread`: the std of the study-rule gain over n_runs seeds."""
    mean = {f"gain/{resize}/0": 0.0, f"gain_se/{resize}/0": 0.0}
    for level, (gain, se) in gains.items():
        mean[f"gain/{resize}/{level}"], mean[f"gain_se/{resize}/{level}"] = gain, se
    std = {f"gain/{resize}/study": spread} if spread is not None else {}
    return Pooled(label, transfer, n_runs, mean, std, {})


SCRATCH = pooled("IMP2", False, {"study": (0.10, 0.01), "0.5": (0.05, 0.01), "1": (0.12, 0.01)})
MNET = pooled("MNET1", True, {"study": (0.00, 0.01), "0.5": (0.01, 0.01), "1": (-0.01, 0.01)})


def test_holds_when_scratch_models_gain_far_more_than_the_noise():
    text = blur_verdict([SCRATCH, MNET], "antialias")
    assert text.endswith("Do from-scratch models gain more from blur? yes.")
    assert "IMP2 +10.0 ± 1.0 pp at the study's rule, best +12.0 pp at σ/w=1" in text
    assert "MNET1 +0.0 ± 1.0 pp at the study's rule, best +1.0 pp at σ/w=0.5" in text
    assert "+10.0 pp at the study's rule, +11.0 pp at the best level (noise level, 2 standard errors: ±2.0 pp)" in text


def test_does_not_hold_when_mobilenets_gain_more():
    scratch = pooled("IMP2", False, {"study": (0.00, 0.01), "1": (-0.02, 0.01)})
    mnet = pooled("MNET1", True, {"study": (0.08, 0.01), "1": (0.10, 0.01)})
    text = blur_verdict([scratch, mnet], "antialias")
    assert text.endswith("Do from-scratch models gain more from blur? no.")
    assert "-8.0 pp at the study's rule, -10.0 pp at the best level" in text  # best of IMP2 is its study rule (0)


def test_not_clearly_when_the_difference_is_within_the_seed_spread():
    # a 1-pp gap is within ±2 pp of noise; a 3-pp gap is not, unless the seeds disagree
    near = pooled("IMP2", False, {"study": (0.03, 0.01), "1": (0.03, 0.01)})
    mnet = pooled("MNET1", True, {"study": (0.02, 0.01), "1": (0.02, 0.01)})
    assert blur_verdict([near, mnet], "antialias").endswith("? not clearly.")
    clear = pooled("IMP2", False, {"study": (0.05, 0.01), "1": (0.05, 0.01)})
    assert blur_verdict([clear, mnet], "antialias").endswith("? yes.")  # 3 pp against ±2 pp of noise
    spread = pooled("IMP2", False, {"study": (0.05, 0.01), "1": (0.05, 0.01)}, n_runs=2, spread=0.04)
    text = blur_verdict([spread, mnet], "antialias")  # se sqrt(1 + 16/2) = 3 pp: noise 2 * sqrt((9 + 1) / 2)
    assert text.endswith("? not clearly.") and "±4.5 pp" in text


@pytest.mark.parametrize("runs", [
    [SCRATCH],  # no MobileNet to compare with
    [MNET],
    [pooled("IMP2", False, {}), pooled("MNET1", True, {})],  # no blur levels swept
])
def test_no_verdict_without_both_groups(runs):
    assert blur_verdict(runs, "antialias") is None


def test_only_runs_swept_at_this_resize_count():
    other = pooled("BASE", False, {"study": (-0.50, 0.01)}, resize="nearest")  # would flip the answer if counted
    assert blur_verdict([SCRATCH, other, MNET], "antialias").endswith("? yes.")
    assert blur_verdict([SCRATCH, MNET], "nearest") is None
