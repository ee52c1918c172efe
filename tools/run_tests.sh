#!/usr/bin/env bash
# Set everything up (idempotent, cached) and run the default test suite.
#   tools/run_tests.sh [pytest args]     e.g. tools/run_tests.sh -m slow
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/setup_env.sh"
cd "$ROOT"
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec "$ROOT/.venv/bin/python" -m pytest tests -q -ra --durations=15 "$@"
