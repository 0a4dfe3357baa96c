#!/usr/bin/env bash
# The test command: install what is needed, then run the whole suite (unit + end-to-end on ../shared/data).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The report's and the app's browser tests need Debian's chromium (the app's through Playwright, never its own browser download); install it where we can (root with apt), else it skips.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "note: could not install chromium" >&2
fi
# The sweep tests start a throw-away PostgreSQL cluster (tests/test_sweep.py); install its server the same way.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) || echo "note: could not install postgresql" >&2
fi
exec .venv/bin/python -m pytest -q -ra "$@"
