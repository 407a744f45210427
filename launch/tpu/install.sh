#!/usr/bin/env bash
# Install the project on every worker of the slice: into ~/$TPU_REPO_DIR/.venv, with the
# versions pinned in constraints.txt plus jax[tpu] (libtpu) at the pinned jax version.
#   launch/tpu/install.sh [--dry-run]
# The code comes from SNOWJAX_GIT_URL at SNOWJAX_GIT_REF (default main) when set, else a
# `git archive` of this checkout's HEAD copied to every worker with scp.
# Configuration: launch/tpu/common.sh.
# shellcheck source=launch/tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
jax_version=$(sed -n 's/^jax==//p' "$repo_root/constraints.txt")
: "${jax_version:?constraints.txt pins no jax version}"
dir=$TPU_REPO_DIR

if [[ -n ${SNOWJAX_GIT_URL:-} ]]; then
  fetch="rm -rf ${dir} && git clone --quiet $(printf %q "$SNOWJAX_GIT_URL") ${dir} && git -C ${dir} checkout --quiet $(printf %q "${SNOWJAX_GIT_REF:-main}")"
else
  archive=${TMPDIR:-/tmp}/snowjax-${TPU_NAME}.tar.gz
  run git -C "$repo_root" archive --format=tar.gz -o "$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "${TPU_NAME}:snowjax.tar.gz" "${LOCATION[@]}" --worker=all
  fetch="rm -rf ${dir} && mkdir -p ${dir} && tar -xzf snowjax.tar.gz -C ${dir}"
fi
# The same on every worker; pip resolves against the pins, so all hosts run identical versions.
ssh_worker all "set -e; ${fetch}; cd ${dir}; python3 -m venv .venv; .venv/bin/pip install -q --upgrade pip; .venv/bin/pip install -q -c constraints.txt -e . 'jax[tpu]==${jax_version}'; .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
