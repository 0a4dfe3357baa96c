#!/usr/bin/env bash
# The test command: install what is needed, then run the whole suite (unit + end-to-end on ../shared/data).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra "$@"
