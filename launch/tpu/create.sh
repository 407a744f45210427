#!/usr/bin/env bash
# Create the TPU VM slice through a queued resource and wait until it is ACTIVE.
#   TPU_PROJECT=my-proj TPU_ZONE=us-east5-a TPU_NAME=snow launch/tpu/create.sh [--dry-run]
# Extra: TPU_SPOT=1 asks for spot capacity; TPU_RESERVED=1 uses your reservation.
# Configuration: launch/tpu/common.sh.
# shellcheck source=launch/tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

extra=()
if [[ ${TPU_SPOT:-0} == 1 ]]; then
  extra+=(--spot)
fi
if [[ ${TPU_RESERVED:-0} == 1 ]]; then
  extra+=(--reserved)
fi
run gcloud compute tpus queued-resources create "$TPU_QUEUED_RESOURCE" "${LOCATION[@]}" \
  --node-id "$TPU_NAME" --accelerator-type "$TPU_ACCELERATOR_TYPE" \
  --runtime-version "$TPU_RUNTIME_VERSION" "${extra[@]}"

describe=(gcloud compute tpus queued-resources describe "$TPU_QUEUED_RESOURCE" "${LOCATION[@]}"
  --format "value(state.state)")
if ((DRY_RUN)); then
  run "${describe[@]}"
  exit 0
fi
# Queued resources go WAITING_FOR_RESOURCES -> PROVISIONING -> ACTIVE (or FAILED / SUSPENDED).
while true; do
  state=$("${describe[@]}")
  echo "queued resource ${TPU_QUEUED_RESOURCE}: ${state}" >&2
  case "$state" in
    ACTIVE) break ;;
    FAILED | SUSPENDED) exit 1 ;;
  esac
  sleep "${TPU_POLL_SECONDS:-60}"
done
echo "slice ${TPU_NAME} (${TPU_ACCELERATOR_TYPE}, $(num_workers) workers) is ready" >&2
