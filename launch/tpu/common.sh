#!/usr/bin/env bash
# Shared by the launch/tpu scripts (sourced, not run). Configuration, all from the environment:
#   TPU_PROJECT            Google Cloud project (required)
#   TPU_ZONE               zone with the capacity, e.g. the one your quota is in (required)
#   TPU_NAME               name of the TPU VM slice (required)
#   TPU_ACCELERATOR_TYPE   slice type (default v5p-128: 64 chips, 16 hosts)
#   TPU_RUNTIME_VERSION    TPU VM image (default v2-alpha-tpuv5, the v5p runtime)
#   TPU_QUEUED_RESOURCE    queued-resource id (default: TPU_NAME-qr)
#   TPU_NUM_WORKERS        hosts in the slice (default: from the accelerator type)
#   TPU_REPO_DIR           where the project lives on each worker (default snowjax, under $HOME)
# --dry-run (first argument of any script) prints each gcloud command instead of running it.
set -euo pipefail

DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then
  DRY_RUN=1
fi

: "${TPU_PROJECT:?set TPU_PROJECT (the Google Cloud project)}"
: "${TPU_ZONE:?set TPU_ZONE (e.g. the zone of your TPU quota)}"
: "${TPU_NAME:?set TPU_NAME (the name of the slice)}"
TPU_ACCELERATOR_TYPE=${TPU_ACCELERATOR_TYPE:-v5p-128}
TPU_RUNTIME_VERSION=${TPU_RUNTIME_VERSION:-v2-alpha-tpuv5}
TPU_QUEUED_RESOURCE=${TPU_QUEUED_RESOURCE:-${TPU_NAME}-qr}
TPU_REPO_DIR=${TPU_REPO_DIR:-snowjax}
LOCATION=(--project "$TPU_PROJECT" --zone "$TPU_ZONE")

# Print a command (quoted so it can be pasted), or run it.
run() {
  if ((DRY_RUN)); then
    printf '%q' "$1"
    printf ' %q' "${@:2}"
    printf '\n'
  else
    "$@"
  fi
}

# Hosts in the slice: v4 / v5p count TensorCores (8 per 4-chip host), v5e / v6e count chips (4 per host in pods).
num_workers() {
  if [[ -n ${TPU_NUM_WORKERS:-} ]]; then
    echo "$TPU_NUM_WORKERS"
    return
  fi
  local size=${TPU_ACCELERATOR_TYPE##*-}
  case "$TPU_ACCELERATOR_TYPE" in
    v4-* | v5p-*) echo $(((size + 7) / 8)) ;;
    v5litepod-* | v6e-*) echo $(((size + 3) / 4)) ;;
    *)
      echo "error: cannot tell the host count of ${TPU_ACCELERATOR_TYPE}; set TPU_NUM_WORKERS" >&2
      return 1
      ;;
  esac
}

ssh_worker() {  # ssh_worker WORKER COMMAND: run COMMAND on one worker (or "all")
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION[@]}" --worker="$1" --command "$2"
}
