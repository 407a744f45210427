#!/usr/bin/env bash
# Delete the queued resource and its TPU VM slice (--force deletes the node with it).
#   launch/tpu/teardown.sh [--dry-run]
# Configuration: launch/tpu/common.sh.
# shellcheck source=launch/tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

run gcloud compute tpus queued-resources delete "$TPU_QUEUED_RESOURCE" "${LOCATION[@]}" --force --quiet
