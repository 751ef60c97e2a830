#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install vssm into it.
#   bash scripts/setup_env.sh                    # core stack, and the compiled CPU scan backend (system C++ compiler)
#   VSSM_BUILD_CPU=0 bash scripts/setup_env.sh   # skip the CPU backend (vssm then runs the slower torch backend)
#   VSSM_BUILD_CUDA=1 bash scripts/setup_env.sh  # also build the optional CUDA extension (needs nvcc, not a GPU)
# Idempotent: it installs or builds only what changed since the last run. The two compiled builds are
# independent: a failed or skipped CPU build leaves everything working, slower, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VSSM_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "vssm needs Python >= 3.10"' || exit 1

stamp_of() { cat requirements.txt pyproject.toml "$@" 2>/dev/null | sha256sum | cut -c1-16; }
STAMP="$VENV/.vssm-core-$(stamp_of)"
if [ ! -f "$STAMP" ]; then
    echo "[setup] installing the pinned stack (requirements.txt) into $VENV"
    start=$(date +%s)
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip "setuptools>=77,<81" wheel
    "$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
    rm -f "$VENV"/.vssm-core-*
    touch "$STAMP"
    echo "[setup] core stack installed in $(( $(date +%s) - start )) s"
else
    echo "[setup] core stack up to date ($VENV)"
fi

if [ "${VSSM_BUILD_CPU:-1}" = "1" ]; then
    CPU_SRC=kernels/selective_scan_cpu
    CPU_STAMP="$VENV/.vssm-cpu-$(cat $CPU_SRC/setup.py $CPU_SRC/csrc/* | sha256sum | cut -c1-16)-${VSSM_CPU_ARCH:-native}"
    if [ -f "$CPU_STAMP" ]; then
        echo "[setup] compiled CPU scan backend up to date"
    elif ! command -v "${CXX:-c++}" >/dev/null 2>&1; then
        echo "[setup] no C++ compiler (${CXX:-c++}): the compiled CPU scan backend is not built; vssm uses the slower torch backend"
    else
        echo "[setup] building the compiled CPU scan backend ($CPU_SRC, about a minute on 2 cores)"
        start=$(date +%s)
        if "$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation "./$CPU_SRC"; then
            rm -f "$VENV"/.vssm-cpu-*
            touch "$CPU_STAMP"
            echo "[setup] CPU scan backend built in $(( $(date +%s) - start )) s"
        else
            echo "[setup] WARNING: building the CPU scan backend failed (see above); vssm works with the slower torch backend"
        fi
    fi
fi

if [ "${VSSM_BUILD_CUDA:-0}" = "1" ]; then
    SRC_STAMP="$VENV/.vssm-cuda-$(cat kernels/selective_scan/setup.py kernels/selective_scan/csrc/* | sha256sum | cut -c1-16)"
    if [ ! -f "$SRC_STAMP" ]; then
        echo "[setup] building the CUDA selective-scan extension (kernels/selective_scan; a few minutes)"
        start=$(date +%s)
        "$PY" -m pip install --quiet --disable-pip-version-check --no-build-isolation ./kernels/selective_scan
        rm -f "$VENV"/.vssm-cuda-*
        touch "$SRC_STAMP"
        echo "[setup] CUDA extension built in $(( $(date +%s) - start )) s"
    else
        echo "[setup] CUDA extension up to date"
    fi
fi
