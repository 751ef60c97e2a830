#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite. Extra arguments go to pytest.
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh tests/ops -k triton
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/setup_mm.sh  # the detection/segmentation tests need the OpenMMLab stack
VENV=${VSSM_VENV:-$PWD/.venv}
start=$(date +%s)
# two workers on two cores, one intra-op thread each
OMP_NUM_THREADS=1 "$VENV/bin/python" -m pytest -n "${VSSM_TEST_WORKERS:-2}" -q --durations=30 "$@"
echo "[test] finished in $(( $(date +%s) - start )) s"
