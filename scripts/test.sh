#!/usr/bin/env bash
# The test command: install what is needed, then run the whole suite (unit + end-to-end on ../shared/data).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The report's browser test needs Debian's chromium; install it where we can (root with apt), else it skips.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "note: could not install chromium" >&2
fi
exec .venv/bin/python -m pytest -q -ra "$@"
