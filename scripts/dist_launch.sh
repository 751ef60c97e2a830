#!/usr/bin/env bash
# The launcher behind detection/ and segmentation/ tools/dist_{train,test}.sh:
#   bash scripts/dist_launch.sh SCRIPT NPOS ARG_1 .. ARG_NPOS [GPUS] [SCRIPT options]
# runs SCRIPT with its NPOS positional arguments and the options: in one process when GPUS <= 1 on one node
# (CPU or one GPU; the default), with torchrun on GPUS processes per node otherwise. Several machines, as with
# mmdet's dist_train.sh: run the same command on each with NNODES (default 1), NODE_RANK (0..NNODES-1),
# MASTER_ADDR (node 0's address, default 127.0.0.1) and PORT (default 29500) set.
# Python: the project's environment, $VSSM_VENV (default: .venv at the repository root), else python3 when it
# can import vssm; never whichever `python` is first on PATH.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT=$1
NPOS=$2
shift 2
NAME=$(basename "$(dirname "$(dirname "$SCRIPT")")")/tools/dist_$(basename "$SCRIPT" .py).sh

fail() {
    echo "$NAME: $*" >&2
    exit 2
}

whole_number() {  # NAME VALUE MINIMUM: VALUE must be a whole number >= MINIMUM
    [[ "$2" =~ ^[0-9]+$ ]] && [ "$((10#$2))" -ge "$3" ] || fail "$1 must be a whole number >= $3, got '$2'"
}

if [ $# -lt "$NPOS" ]; then
    fail "expected $NPOS positional argument(s) before GPUS, got $#"
fi
POSITIONAL=("${@:1:$NPOS}")
shift "$NPOS"
GPUS=1
if [ $# -ge 1 ] && [[ "$1" != -* ]]; then  # GPUS may be left out before the script's options
    GPUS=$1
    shift
    whole_number "GPUS (processes per node, the argument after the positional ones)" "$GPUS" 1
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
whole_number NNODES "$NNODES" 1
whole_number NODE_RANK "$NODE_RANK" 0
whole_number PORT "$PORT" 1
[ "$NODE_RANK" -lt "$NNODES" ] || fail "NODE_RANK must be below NNODES ($NNODES), got $NODE_RANK"

VENV=${VSSM_VENV:-$REPO/.venv}
SETUP="run 'bash scripts/setup_env.sh' (and scripts/setup_mm.sh) or set VSSM_VENV to an environment with vssm"
if [ -x "$VENV/bin/python" ]; then
    PYTHON=$VENV/bin/python
elif [ -n "${VSSM_VENV:-}" ]; then
    fail "VSSM_VENV=$VSSM_VENV has no bin/python; $SETUP"
else
    PYTHON=$(command -v python3 || true)
    [ -n "$PYTHON" ] || fail "no Python environment: $REPO/.venv does not exist and there is no python3; $SETUP"
    WHY=$("$PYTHON" -c "import vssm" 2>&1) || fail "no Python environment with vssm: $REPO/.venv does not exist" \
        "and $PYTHON cannot import vssm (${WHY##*$'\n'}); $SETUP"
fi

if [ "$GPUS" -le 1 ] && [ "$NNODES" -eq 1 ]; then
    exec "$PYTHON" "$SCRIPT" "${POSITIONAL[@]}" --launcher none "$@"
fi
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" --master_port="$PORT" "$SCRIPT" "${POSITIONAL[@]}" --launcher pytorch "$@"
