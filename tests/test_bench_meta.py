"""benchmarks/_meta.py: every benchmark JSON records the git commit and the machine's load."""

import importlib.util
import json
from pathlib import Path

META = Path(__file__).resolve().parents[1] / "benchmarks" / "_meta.py"


def test_run_meta_records_commit_and_load():
    spec = importlib.util.spec_from_file_location("_meta", META)
    meta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(meta)
    m = meta.run_meta(meta.loadavg())
    assert set(m) == {"git_commit", "cpus", "loadavg_start", "loadavg_end"}
    assert m["git_commit"] is None or len(m["git_commit"].split("-")[0]) >= 7
    assert len(m["loadavg_end"]) == 3 and all(x >= 0 for x in m["loadavg_end"])
    json.dumps(m)  # goes into the JSON as is
