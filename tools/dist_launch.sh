#!/usr/bin/env bash
# One process per GPU under torchrun for any tool that takes --launcher pytorch.
# Usage: bash tools/dist_launch.sh TOOL.py CONFIG GPUS [tool options]
# (tools/dist_train.sh, dist_test.sh and dist_gdp_prune_pipeline.sh call it.)

TOOL=$1
CONFIG=$2
GPUS=$3
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
    $(dirname "$0")/$TOOL \
    $CONFIG \
    --launcher pytorch ${@:4}
