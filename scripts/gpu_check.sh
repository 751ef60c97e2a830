#!/usr/bin/env bash
# One command on a GPU machine: scan parity of every GPU backend at real shapes, the scan benchmark, model
# throughput (eager and compiled, fp32 and bf16), a short real training run and auto's measured backend table,
# in under 8 minutes, with one report: output/gpu_check/gpu_check.md (figures: gpu_check.json).
#   bash scripts/gpu_check.sh [--dry-run] [--out DIR] [--budget SECONDS] [--data-path DIGITS_FOLDER]
# Needs torch, triton and timm (nothing is installed); --dry-run (or VSSM_GPU_CHECK_DRY=1) runs every step on
# the CPU at tiny shapes. Exit status 1 when a parity check fails or the training run misses the CPU accuracy.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VSSM_VENV:-$REPO/.venv}
if [ -x "$VENV/bin/python" ]; then
    PYTHON=$VENV/bin/python
else
    PYTHON=$(command -v python3 || true)
    if [ -z "$PYTHON" ] || ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
        echo "gpu_check.sh: no Python with torch: $VENV does not exist and ${PYTHON:-python3 (not found)} cannot import torch" >&2
        exit 2
    fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # vssm from this checkout, installed or not
exec "$PYTHON" -m vssm.devtools.gpu_check.check "$@"
