#!/usr/bin/env bash
# Set up the environment (idempotent) and run the project's main job on embedded data.
# Until the classification trainer lands, the main job is the selective-scan benchmark on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${VSSM_VENV:-$PWD/.venv}
"$VENV/bin/python" scripts/bench_scan.py "$@"
