#!/usr/bin/env bash
# Set everything up (idempotent, cached) and run the demo: UM-MAE Swin-T
# pre-training for a few iterations on photos bundled with scikit-image.
#   tools/demo.sh [--iters N] [--work-dir DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" tools/demo.py "$@"
