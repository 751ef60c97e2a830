#!/usr/bin/env bash
# bash dist_train.sh CONFIG GPUS [train.py options]: GPUS=1 runs one process (CPU or one GPU), more use torchrun.
set -euo pipefail
CONFIG=$1
GPUS=${2:-1}
shift $(( $# >= 2 ? 2 : 1 ))
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "$GPUS" -le 1 ]; then
    exec python "$HERE/train.py" "$CONFIG" --launcher none "$@"
fi
exec python -m torch.distributed.run --nnodes=1 --nproc_per_node="$GPUS" --master_port="${PORT:-29500}" \
    "$HERE/train.py" "$CONFIG" --launcher pytorch "$@"
