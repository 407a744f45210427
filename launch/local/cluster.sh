#!/usr/bin/env bash
# Start N local CPU processes that form one JAX cluster over loopback: the code path of a
# TPU pod or a GPU cluster on one machine (CI tests multi-host training this way).
#
#   launch/local/cluster.sh [--dry-run] [--log-dir DIR] [--port PORT] NPROC NDEV [snowjax train args...]
#   launch/local/cluster.sh 2 4 configs/curriculum/demo.yaml run_dir=runs/mp data.shards=2
#
# Each process gets NDEV simulated CPU devices (--xla_force_host_platform_device_count) and
# joins an explicit coordinator on 127.0.0.1:PORT (a free port unless --port / SNOWJAX_PORT).
# Logs: DIR/process_<i>.log (default logs/local-<time>), also echoed with a [p<i>] prefix.
# If one process fails, the others get SIGTERM and, SNOWJAX_KILL_GRACE seconds later (5),
# SIGKILL: a JAX cluster cannot continue without a member. The exit status is the first
# failure's. Ctrl-C / SIGTERM to this script is forwarded (the trainers save and stop).
# Environment: SNOWJAX_CMD, the trainer command (default "snowjax"; "python -m snowjax.cli"
# works too), PYTHON (finds a free port; default python3). Needs bash >= 5.1.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

dry_run=0
log_dir=""
port="${SNOWJAX_PORT:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --log-dir) log_dir=${2:?--log-dir needs a directory}; shift 2 ;;
    --port) port=${2:?--port needs a number}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ || ! $2 =~ ^[1-9][0-9]*$ ]]; then
  echo "error: expected NPROC NDEV (positive integers) before the snowjax train arguments" >&2
  usage >&2
  exit 2
fi
nproc=$1
ndev=$2
shift 2
if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  echo "error: bash >= 5.1 is needed (wait -n -p); this is ${BASH_VERSION}" >&2
  exit 2
fi
read -r -a trainer <<<"${SNOWJAX_CMD:-snowjax}"
log_dir=${log_dir:-logs/local-$(date +%Y%m%d-%H%M%S)}
if [[ -z $port ]]; then
  port=$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
# Our device count replaces any the caller's XLA_FLAGS already sets.
xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}") --xla_force_host_platform_device_count=${ndev}"
xla_flags=${xla_flags# }

process_env() {  # the environment of process $1, one NAME=value per line
  printf '%s\n' JAX_PLATFORMS=cpu "XLA_FLAGS=${xla_flags}" SNOWJAX_DISTRIBUTED=explicit \
    "SNOWJAX_COORDINATOR=127.0.0.1:${port}" "SNOWJAX_NUM_PROCESSES=${nproc}" "SNOWJAX_PROCESS_ID=$1"
}

if ((dry_run)); then
  for ((i = 0; i < nproc; i++)); do
    mapfile -t vars < <(process_env "$i")
    printf 'env'
    printf ' %q' "${vars[@]}" "${trainer[@]}" train "$@"
    printf ' > %q 2>&1 &\n' "${log_dir}/process_${i}.log"
  done
  exit 0
fi

mkdir -p "$log_dir"
# Job control: each process gets its own process group, so stopping one stops its children
# too, and a Ctrl-C reaches only this script (which forwards SIGTERM).
set -m
declare -A live=()  # pid -> process id
for ((i = 0; i < nproc; i++)); do
  mapfile -t vars < <(process_env "$i")
  env "${vars[@]}" PYTHONUNBUFFERED=1 "${trainer[@]}" train "$@" \
    > >(tee "${log_dir}/process_${i}.log" | sed -u "s/^/[p${i}] /") 2>&1 &
  live[$!]=$i
done
echo "launch/local: ${nproc} processes x ${ndev} devices, coordinator 127.0.0.1:${port}, logs in ${log_dir}" >&2

signal_all() {  # signal_all SIG: send SIG to every live process group
  local pid
  for pid in "${!live[@]}"; do
    kill -"$1" -- "-$pid" 2>/dev/null || true
  done
}

interrupted=0
killer=""
# shellcheck disable=SC2317  # run by the trap
forward() {
  interrupted=1
  echo "launch/local: stopping: SIGTERM to every process (they save a checkpoint first)" >&2
  signal_all TERM
}
trap forward INT TERM

rc=0
while ((${#live[@]} > 0)); do
  done_pid=""
  status=0
  wait -n -p done_pid "${!live[@]}" || status=$?
  [[ -n $done_pid ]] || continue  # woken by a trapped signal
  i=${live[$done_pid]}
  unset "live[$done_pid]"
  if ((status != 0 && rc == 0)); then
    rc=$status
    if ((${#live[@]} > 0 && !interrupted)); then
      echo "launch/local: process ${i} (pid ${done_pid}) exited with status ${status}; stopping the others" >&2
      signal_all TERM
      (sleep "${SNOWJAX_KILL_GRACE:-5}" && signal_all KILL) &
      killer=$!
    fi
  fi
done
if [[ -n $killer ]]; then
  kill "$killer" 2>/dev/null || true
fi
wait  # the log pipes
if ((interrupted && rc == 0)); then
  rc=130
fi
exit "$rc"
