#!/usr/bin/env bash
# mmdetection's tools/dist_test.sh, through torchrun (tools/dist_launch.sh).
# Usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]
exec bash "$(dirname "$0")/dist_launch.sh" test.py "$1" "$3" "$2" "${@:4}"
