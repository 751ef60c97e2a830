#!/usr/bin/env bash
# Install the OpenMMLab stack (requirements-mm.txt) into the project's virtual environment (run
# scripts/setup_env.sh first). Idempotent. mmcv 2.1.0 has no public binary wheel for the pinned torch: a
# wheel in $VSSM_WHEELS (default ../shared/wheels) is used when present, else mmcv is compiled from source,
# which takes about 13 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VSSM_VENV:-$PWD/.venv}
PY="$VENV/bin/python"
WHEELS=${VSSM_WHEELS:-$PWD/../shared/wheels}
[ -x "$PY" ] || { echo "[setup-mm] run scripts/setup_env.sh first" >&2; exit 1; }
STAMP="$VENV/.vssm-mm-$(cat requirements-mm.txt | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ]; then
    echo "[setup-mm] OpenMMLab stack up to date"
    exit 0
fi
start=$(date +%s)
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
if ls "$WHEELS"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "[setup-mm] installing mmcv 2.1.0 from $WHEELS"
    "${PIP[@]}" --find-links "$WHEELS" --no-index mmcv==2.1.0 --no-deps
else
    echo "[setup-mm] no mmcv 2.1.0 wheel in $WHEELS: compiling mmcv from source, about 13 minutes on 2 cores..."
    "${PIP[@]}" "setuptools<81" wheel ninja
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" --no-build-isolation mmcv==2.1.0
fi
"${PIP[@]}" -r requirements-mm.txt
rm -f "$VENV"/.vssm-mm-*
touch "$STAMP"
echo "[setup-mm] OpenMMLab stack installed in $(( $(date +%s) - start )) s"
