#!/usr/bin/env bash
# bash dist_test.sh CONFIG CHECKPOINT [GPUS] [test.py options, e.g. --tta]: GPUS=1 runs one process (CPU or GPU).
HERE=$(cd "$(dirname "$0")" && pwd)
exec bash "$HERE/../../scripts/dist_launch.sh" "$HERE/test.py" 2 "$@"
