#!/usr/bin/env bash
# mmdetection's tools/dist_train.sh, through torchrun (tools/dist_launch.sh).
# Usage: bash tools/dist_train.sh CONFIG GPUS [train.py options]
exec bash "$(dirname "$0")/dist_launch.sh" train.py "$@"
