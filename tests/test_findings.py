"""The study's four findings, judged on constructed Table 2 rows whose answer is known."""

from cifarlab.evaluate.findings import check_findings, format_findings

STUDY = {"base": (60.7, 30.5, 47.0), "imp1": (87.3, 54.5, 76.0), "imp2": (88.4, 58.5, 79.0),
         "mnet1": (73.4, 61.5, 69.0), "mnet2": (81.2, 75.0, 75.5)}


def rows(table, std=None, runs=1):
    return [{"preset": k, "row": k, "n_runs": runs, "validation": v, "test": t, "test_filtered": f,
             "validation_std": std, "test_std": std, "test_filtered_std": std} for k, (v, t, f) in table.items()]


def verdicts(table, n_val=10_000, n_test=283, **kw):
    return {f["id"]: f["verdict"] for f in check_findings(rows(table, **kw), n_val, n_test)}


def test_the_studys_own_table_2_makes_every_finding_hold():
    # (b): +1.1 points on 10,000 validation images is outside 2 SE (0.9); +4 on 283 photos is not, and
    # a set that cannot tell does not veto one that can
    assert verdicts(STUDY) == {"a": "holds", "b": "holds", "c": "holds", "d": "holds"}


def test_sets_that_clearly_disagree_make_a_finding_not_clear():
    split = {**STUDY, "imp2": (90.0, 40.0, 79.0)}  # better on validation, far worse on photos
    assert verdicts(split, n_test=5000)["b"] == "not clear"


def test_each_finding_can_fail():
    flipped = {"base": (80, 70, 80), "imp1": (85, 50, 60), "imp2": (75, 40, 50),
               "mnet1": (80, 40, 50), "mnet2": (82, 45, 55)}  # every blur gain +10: no difference
    v = verdicts(flipped, n_test=5000)
    assert v == {"a": "does not hold", "b": "does not hold", "c": "does not hold", "d": "not clear"}
    blur_helps_mnets = {**flipped, "mnet1": (80, 40, 70), "mnet2": (82, 45, 75)}
    assert verdicts(blur_helps_mnets, n_test=5000)["d"] == "does not hold"


def test_seed_spread_widens_the_noise_band():
    close = {**STUDY, "imp1": (86.0, 54.5, 76.0), "imp2": (88.0, 58.5, 79.0)}
    assert verdicts(close, n_test=0)["b"] == "holds"  # validation only: 2 points on 10,000 images
    assert verdicts(close, n_test=0, std=2.0, runs=2)["b"] == "not clear"


def test_missing_rows_and_test_sets_leave_findings_out():
    only = {k: STUDY[k] for k in ("base", "imp1")}
    assert verdicts(only) == {}
    assert set(verdicts(STUDY, n_test=0)) == {"a", "b"}  # no photos: no (c) or (d)
    assert "| (a)" in format_findings(check_findings(rows(STUDY), 10_000, 283))
