#!/usr/bin/env bash
# Run the same command on every worker of a Cloud TPU VM pod slice; JAX finds the
# other workers by itself (SNOWJAX_DISTRIBUTED=auto). The repo must be at $REPO on each worker.
#   TPU_NAME=snow-v5p-128 ZONE=us-east5-a launch/tpu/run.sh configs/train/snowcoder-1.3b-phase1.yaml data.path=gs://...
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO=${REPO:-~/snowjax}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "cd $REPO && SNOWJAX_DISTRIBUTED=auto .venv/bin/snowjax train${ARGS}"
