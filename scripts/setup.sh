#!/usr/bin/env bash
# Create .venv (once) and install cifarlab into it with the pinned PyTorch (CPU build where pip has it).
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again (pip skips what is installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# pip's noisy "WARNING: Location" lines are dropped; with pipefail the pipeline keeps pip's exit status
# (grep's "nothing left" status 1 is not a failure), so a failed install stops here with pip's message.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[test]" 2>&1 \
  | { grep -v "^WARNING: Location" >&2 || true; } \
  || { echo "setup failed: pip install exited with an error (message above)" >&2; exit 1; }
.venv/bin/python -c "import torch, cifarlab" || { echo "setup failed: torch or cifarlab does not import" >&2; exit 1; }
