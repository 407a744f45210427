#!/usr/bin/env bash
# One GPU node, one process driving all its GPUs (the mesh covers every local GPU).
#   launch/gpu/single_node.sh [--dry-run] configs/train/snowcoder-1.3b-h100.yaml data.path=/data/phase1
# Runs `snowjax train ARGS model.attention=cudnn` with the H100 settings of env.sh.
# SNOWJAX_CMD overrides the trainer command (default "snowjax"). --dry-run prints the
# environment and the command instead of running it.
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
dry_run=0
if [[ ${1:-} == --dry-run ]]; then
  dry_run=1
  shift
fi
# shellcheck source=launch/gpu/env.sh
source "$here/env.sh"
export SNOWJAX_DISTRIBUTED=single
read -r -a trainer <<<"${SNOWJAX_CMD:-snowjax}"
cmd=("${trainer[@]}" train "$@" model.attention=cudnn)
if ((dry_run)); then
  for var in SNOWJAX_DISTRIBUTED XLA_PYTHON_CLIENT_MEM_FRACTION XLA_FLAGS NCCL_NVLS_ENABLE NCCL_DEBUG; do
    printf 'export %s=%q\n' "$var" "${!var}"
  done
  printf '%q' "${cmd[0]}"
  printf ' %q' "${cmd[@]:1}"
  printf '\n'
  exit 0
fi
exec "${cmd[@]}"
