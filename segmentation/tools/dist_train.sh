#!/usr/bin/env bash
# bash dist_train.sh CONFIG [GPUS] [train.py options]: GPUS processes per node (default 1: one process, CPU or one GPU;
# more: torchrun). Several machines: run it on each with NNODES, NODE_RANK, MASTER_ADDR, PORT set, as with
# mmdet's dist_train.sh (see scripts/dist_launch.sh).
HERE=$(cd "$(dirname "$0")" && pwd)
exec bash "$HERE/../../scripts/dist_launch.sh" "$HERE/train.py" 1 "$@"
