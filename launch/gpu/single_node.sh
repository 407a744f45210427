#!/usr/bin/env bash
# One GPU node, one process driving all its GPUs (the mesh covers every local GPU).
#   launch/gpu/single_node.sh configs/train/snowcoder-1.3b-phase1.yaml data.path=/data/phase1
set -euo pipefail
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
# Overlap collectives with compute on NVIDIA GPUs.
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
exec snowjax train "$@" model.attention=cudnn
