#!/usr/bin/env bash
# bash dist_train.sh CONFIG [GPUS] [train.py options]: GPUS=1 runs one process (CPU or one GPU), more use torchrun.
HERE=$(cd "$(dirname "$0")" && pwd)
exec bash "$HERE/../../scripts/dist_launch.sh" "$HERE/train.py" 1 "$@"
