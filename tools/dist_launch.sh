#!/usr/bin/env bash
# One process per GPU under torchrun for any tool that takes --launcher pytorch.
# Usage: bash tools/dist_launch.sh TOOL.py CONFIG GPUS [tool options]
# (tools/dist_train.sh, dist_test.sh and dist_gdp_prune_pipeline.sh call it.)
# Every argument reaches the tool as given (a --cfg-options value may hold spaces).
# OMP_NUM_THREADS (torchrun would set 1) defaults to each process's share of the
# cores: the graph tracing and rank 0's export check run on the CPU.

TOOL=$1
CONFIG=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-"python"}
CORES=$(nproc 2>/dev/null || echo 1)
SHARE=$(( CORES / ${GPUS:-1} ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( SHARE > 0 ? SHARE : 1 ))}

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/$TOOL" \
    "$CONFIG" \
    --launcher pytorch "${@:4}"
