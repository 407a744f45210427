#!/usr/bin/env bash
# Simulate a multi-host run on one machine: N processes, each with D CPU devices,
# joined by jax.distributed over loopback (the code path of a TPU pod or GPU cluster).
#   launch/local/multiprocess.sh 2 4 configs/train/demo.yaml data.path=... run_dir=runs/mp
set -euo pipefail
NPROC=${1:?number of processes}; NDEV=${2:?devices per process}; shift 2
PORT=${SNOWJAX_PORT:-$((20000 + RANDOM % 20000))}
SNOWJAX=${SNOWJAX:-snowjax}
pids=()
trap 'kill ${pids[*]} 2>/dev/null || true' EXIT INT TERM
for ((i = 0; i < NPROC; i++)); do
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="--xla_force_host_platform_device_count=${NDEV}" \
  JAX_COORDINATOR_ADDRESS="127.0.0.1:${PORT}" JAX_NUM_PROCESSES="${NPROC}" JAX_PROCESS_ID="${i}" \
    "$SNOWJAX" train "$@" > >(sed "s/^/[p${i}] /") 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
trap - EXIT
exit $rc
