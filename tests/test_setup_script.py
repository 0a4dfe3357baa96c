"""scripts/setup.sh against a fake .venv/bin/python: a failed pip install must fail the script (offline, fast)."""

import shutil
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"


def run_setup(tmp_path: Path, pip_rc: int) -> subprocess.CompletedProcess:
    """Copy setup.sh into a fake checkout whose .venv/bin/python fakes pip (exit pip_rc) and the import check."""
    if shutil.which("bash") is None:
        pytest.skip("bash not found")
    (tmp_path / "scripts").mkdir()
    shutil.copy(SETUP, tmp_path / "scripts" / "setup.sh")
    py = tmp_path / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(f"""#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "WARNING: Location 'x' is ignored"
  echo "ERROR: No matching distribution found for torch==2.13.0" >&2
  exit {pip_rc}
fi
exit 0
""")
    py.chmod(0o755)
    return subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                          timeout=30)


def test_failed_pip_install_fails_setup_with_pips_message(tmp_path):
    r = run_setup(tmp_path, pip_rc=1)
    assert r.returncode != 0
    assert "No matching distribution found for torch==2.13.0" in r.stderr
    assert "setup failed: pip install" in r.stderr
    assert "WARNING: Location" not in r.stdout + r.stderr  # the noise is still filtered


def test_successful_pip_install_passes_setup(tmp_path):
    r = run_setup(tmp_path, pip_rc=0)
    assert r.returncode == 0, r.stderr
    assert "WARNING: Location" not in r.stdout + r.stderr
