#!/usr/bin/env bash
# The whole GDP job (tools/gdp_prune_pipeline.py) on several GPUs, one process per
# GPU under torchrun: every stage trains and evaluates in DDP, rank 0 writes the
# export, the stage markers and the report.
# Usage: bash tools/dist_gdp_prune_pipeline.sh CONFIG GPUS --work-dir DIR [pipeline options]
exec bash "$(dirname "$0")/dist_launch.sh" gdp_prune_pipeline.py "$@"
