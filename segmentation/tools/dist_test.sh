#!/usr/bin/env bash
# bash dist_test.sh CONFIG CHECKPOINT GPUS [test.py options, e.g. --tta]: GPUS=1 runs one process (CPU or GPU).
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
GPUS=${3:-1}
shift $(( $# >= 3 ? 3 : 2 ))
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "$GPUS" -le 1 ]; then
    exec python "$HERE/test.py" "$CONFIG" "$CHECKPOINT" --launcher none "$@"
fi
exec python -m torch.distributed.run --nnodes=1 --nproc_per_node="$GPUS" --master_port="${PORT:-29500}" \
    "$HERE/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
