#!/usr/bin/env bash
# The launcher behind detection/ and segmentation/ tools/dist_{train,test}.sh:
#   bash scripts/dist_launch.sh SCRIPT NPOS ARG_1 .. ARG_NPOS [GPUS] [SCRIPT options]
# runs SCRIPT with its NPOS positional arguments and the options: in one process when GPUS <= 1 (CPU or one
# GPU; the default), with torchrun on GPUS processes otherwise (master port $PORT, default 29500).
set -euo pipefail
SCRIPT=$1
NPOS=$2
shift 2
if [ $# -lt "$NPOS" ]; then
    echo "$(basename "$SCRIPT"): expected $NPOS positional argument(s) before GPUS, got $#" >&2
    exit 2
fi
POSITIONAL=("${@:1:$NPOS}")
shift "$NPOS"
GPUS=${1:-1}
[ $# -ge 1 ] && shift
if [ "$GPUS" -le 1 ]; then
    exec python "$SCRIPT" "${POSITIONAL[@]}" --launcher none "$@"
fi
exec python -m torch.distributed.run --nnodes=1 --nproc_per_node="$GPUS" --master_port="${PORT:-29500}" \
    "$SCRIPT" "${POSITIONAL[@]}" --launcher pytorch "$@"
