import json

import pytest

from cifarlab.config import resolve_config, save_config
from cifarlab.evaluate.compare import format_markdown, table2_rows, write_table2


def fake_run(root, preset, seed, accs):
    run = root / f"{preset}-{seed}"
    (run / "eval").mkdir(parents=True)
    save_config(resolve_config(preset, [f"seed={seed}"]), run / "config.yaml")
    for name, acc in accs.items():
        (run / "eval" / f"{name}.json").write_text(json.dumps({"accuracy": acc}))
    return run


def test_table2_pools_seeds_and_sits_beside_the_study(tmp_path):
    runs = [fake_run(tmp_path, "imp1", 0, {"validation": 0.80, "test": 0.50}),
            fake_run(tmp_path, "imp1", 1, {"validation": 0.82, "test": 0.54}),
            fake_run(tmp_path, "base", 0, {"validation": 0.6})]
    rows = {r["preset"]: r for r in table2_rows(runs)}
    assert rows["imp1"]["n_runs"] == 2
    assert rows["imp1"]["validation"] == pytest.approx(81.0) and rows["imp1"]["validation_std"] == pytest.approx(1.41, abs=0.01)
    assert rows["imp1"]["test_filtered"] is None
    assert rows["imp1"]["study_validation"] == 87.3 and rows["base"]["study_test_filtered"] == 47.0
    md = format_markdown(list(rows.values()), no_test=False)
    assert "| IMP1 | 2 | 81.0 ± 1.4 | 52.0 ± 2.8 | — | 87.3 | 54.5 | 76.0 |" in md
    assert "| BASE | 1 | 60.0 | — | — |" in md
    md_path, csv_path = write_table2(list(rows.values()), tmp_path / "out", no_test=True)
    assert "no test set" in md_path.read_text() and csv_path.read_text().startswith("model,")
