#!/usr/bin/env bash
# The whole GDP job (tools/gdp_prune_pipeline.py) on several GPUs, one process per
# GPU under torchrun: every stage trains and evaluates in DDP, rank 0 writes the
# export, the stage markers and the report. Same habits as tools/dist_train.sh.
# Usage: bash tools/dist_gdp_prune_pipeline.sh CONFIG GPUS --work-dir DIR [pipeline options]

CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-"python"}

PYTHONPATH="$(dirname $0)/..":$PYTHONPATH \
$PYTHON -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    $(dirname "$0")/gdp_prune_pipeline.py \
    $CONFIG \
    --launcher pytorch ${@:3}
