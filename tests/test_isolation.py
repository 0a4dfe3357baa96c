"""The suite never writes into the user's home: a representative subset (CLI train/evaluate, photo test
sets and their cache, visualisations with matplotlib) runs in a child pytest whose HOME is an empty
read-only folder, with no CIFARLAB_HOME, XDG or matplotlib settings, and leaves that folder empty."""

import os
import subprocess
import sys
from pathlib import Path

from testdata import CLEARED, PRIVATE_DIRS

REPO = Path(__file__).resolve().parents[1]
SUBSET = ["tests/test_cli.py::test_train_then_evaluate", "tests/test_testset.py::test_cli_evaluate_testset",
          "tests/test_viz.py::test_cli_every_kind_on_imp"]


def test_a_subset_of_the_suite_leaves_home_untouched(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)  # root ignores this; the emptiness check below holds for everyone
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_DIRS and k not in CLEARED}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUBSET],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    home.chmod(0o755)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "3 passed" in r.stdout, r.stdout[-2000:]
    assert list(home.rglob("*")) == []
