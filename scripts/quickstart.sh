#!/usr/bin/env bash
# Set up the environment (idempotent) and train vmamba_nano on the embedded handwritten digits (CPU, a few
# minutes), printing the held-out accuracy. Extra arguments go to classification/main.py.
# Run again, it resumes from (or re-evaluates) the finished run in output/vmamba_nano/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${VSSM_VENV:-$PWD/.venv}
"$VENV/bin/python" classification/main.py --cfg configs/classification/vmamba/vmamba_nano.yaml \
    --output output --tag quickstart "$@"
