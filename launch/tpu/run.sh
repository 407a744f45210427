#!/usr/bin/env bash
# Run the same snowjax command on every worker at once, one log per worker, and fail if any fails.
#   launch/tpu/run.sh [--dry-run] train configs/curriculum/snowcoder-1.3b.yaml phases.0.sources.0.path=gs://...
# Each worker runs `SNOWJAX_DISTRIBUTED=tpu ~/$TPU_REPO_DIR/.venv/bin/snowjax ARGS`: JAX finds
# the other workers from the TPU metadata. Logs: TPU_LOG_DIR (default logs/tpu-<name>-<time>)/worker_<i>.log.
# Configuration: launch/tpu/common.sh.
# shellcheck source=launch/tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if ((DRY_RUN)); then
  shift
fi
if [[ $# -eq 0 ]]; then
  echo "error: give the snowjax arguments, e.g. train configs/curriculum/snowcoder-1.3b.yaml" >&2
  exit 2
fi

log_dir=${TPU_LOG_DIR:-logs/tpu-${TPU_NAME}-$(date +%Y%m%d-%H%M%S)}
workers=$(num_workers)
args=$(printf ' %q' "$@")
remote="cd ${TPU_REPO_DIR} && SNOWJAX_DISTRIBUTED=tpu PYTHONUNBUFFERED=1 .venv/bin/snowjax${args}"
if ((DRY_RUN)); then
  for ((w = 0; w < workers; w++)); do
    printf '%s > %q 2>&1 &\n' "$(ssh_worker "$w" "$remote")" "${log_dir}/worker_${w}.log"
  done
  exit 0
fi

mkdir -p "$log_dir"
pids=()
for ((w = 0; w < workers; w++)); do
  ssh_worker "$w" "$remote" >"${log_dir}/worker_${w}.log" 2>&1 &
  pids+=($!)
done
echo "running on ${workers} workers of ${TPU_NAME}; logs in ${log_dir} (tail -f ${log_dir}/worker_0.log)" >&2
rc=0
for w in "${!pids[@]}"; do
  if ! wait "${pids[$w]}"; then
    echo "worker ${w} failed: ${log_dir}/worker_${w}.log" >&2
    rc=1
  fi
done
exit "$rc"
