"""Multi-process start-up: which cluster this process is in, and joining it.

One function reads the environment and says how to start
(:func:`detect_environment`, pure: tests feed it fake environments), one acts on it
(:func:`initialize`). The modes:

``explicit``
    A coordinator address, a process count and this process's id, from flags or
    ``SNOWJAX_COORDINATOR`` / ``SNOWJAX_NUM_PROCESSES`` / ``SNOWJAX_PROCESS_ID``
    (``SNOWJAX_LOCAL_DEVICE_IDS`` optional). JAX's own ``JAX_COORDINATOR_ADDRESS`` /
    ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` are read too. ``launch/local`` uses it.
``slurm``
    Inside ``srun``: ``SLURM_NTASKS`` processes, this one ``SLURM_PROCID``; the
    coordinator is the first host of ``SLURM_STEP_NODELIST`` (``SLURM_JOB_NODELIST``
    outside a step) on ``SNOWJAX_COORDINATOR_PORT`` or a port derived from the job id.
    With several tasks on a node, each takes its share of the node's GPUs by
    ``SLURM_LOCALID`` (one process per GPU), unless Slurm already bound GPUs per task.
``tpu``
    A Cloud TPU VM pod slice: ``jax.distributed.initialize()`` without arguments (JAX
    reads the workers from the TPU metadata). Chosen when ``TPU_WORKER_HOSTNAMES`` /
    ``TPU_PROCESS_ADDRESSES`` list several workers, or by ``SNOWJAX_DISTRIBUTED=tpu``
    (what ``launch/tpu/run.sh`` sets).
``single``
    Nothing to join.

``SNOWJAX_DISTRIBUTED`` forces a mode (``explicit``, ``slurm``, ``tpu``, ``single``);
``auto`` (or unset) detects, and ``auto`` also lets JAX discover a cluster snowjax
does not recognise (the ``tpu`` mode's no-argument start).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Literal

from snowjax.config import ConfigError

log = logging.getLogger(__name__)

Mode = Literal["tpu", "slurm", "explicit", "single"]
MODES: tuple[str, ...] = ("tpu", "slurm", "explicit", "single")
TPU_COORDINATOR_PORT = 8476  # the port JAX's TPU cluster detection uses


class DistributedConfigError(ConfigError):
    """The environment describes an impossible or incomplete cluster; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How this process joins its cluster.

    ``None`` in ``num_processes`` / ``process_id`` / ``coordinator`` means JAX discovers it
    (TPU pods); ``local_device_ids`` None means every device this process sees.
    """

    mode: Mode
    coordinator: str | None = None  # "host:port" of process 0's coordination service
    num_processes: int | None = 1
    process_id: int | None = 0
    local_device_ids: tuple[int, ...] | None = None
    source: str = ""  # which variables or flags said so (for the log)

    @property
    def is_multi_process(self) -> bool:
        return self.mode != "single"


# ----------------------------------------------------------------------------- parsing helpers


def _int(env: Mapping[str, str], name: str) -> int:
    value = env[name].strip()
    try:
        return int(value)
    except ValueError:
        raise DistributedConfigError(f"{name}={value!r} is not an integer") from None


def _check_address(address: str, name: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedConfigError(f"{name}={address!r}: expected host:port with a port in 1-65535")
    return address


def _check_ids(num: int, pid: int, num_name: str, pid_name: str) -> None:
    if num < 1:
        raise DistributedConfigError(f"{num_name}={num}: the process count must be >= 1")
    if not 0 <= pid < num:
        raise DistributedConfigError(f"{pid_name}={pid} is not a process id of a {num}-process cluster ({num_name})")


def _device_ids(text: str, name: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise DistributedConfigError(f"{name}={text!r}: expected comma-separated device ids") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise DistributedConfigError(f"{name}={text!r}: expected distinct non-negative device ids")
    return ids


def expand_hostlist(nodelist: str) -> list[str]:
    """Slurm's compressed host list -> host names, in order.

    ``"gpu[001-003,007],login1"`` -> ``["gpu001", "gpu002", "gpu003", "gpu007", "login1"]``;
    zero padding is kept; several bracket groups in one name (``rack[1-2]-n[01-02]``) expand
    as a product.
    """
    hosts: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):
        names = [""]
        for literal, group in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            parts = [literal]
            if group:
                parts = []
                for rng in group.split(","):
                    lo, _, hi = rng.partition("-")
                    if not lo.isdigit() or (hi and not hi.isdigit()):
                        raise DistributedConfigError(f"SLURM nodelist {nodelist!r}: bad range {rng!r}")
                    width = len(lo)
                    stop = int(hi) if hi else int(lo)
                    if stop < int(lo):
                        raise DistributedConfigError(f"SLURM nodelist {nodelist!r}: descending range {rng!r}")
                    parts += [f"{literal}{i:0{width}d}" for i in range(int(lo), stop + 1)]
            names = [n + p for n in names for p in parts]
        hosts += [n for n in names if n]
    if not hosts:
        raise DistributedConfigError(f"SLURM nodelist {nodelist!r} names no host")
    return hosts


def _tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """Tasks on node ``node_id`` from ``SLURM_TASKS_PER_NODE`` (``"8(x2),4"`` -> 8, 8, 4)."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            raise DistributedConfigError(f"SLURM_TASKS_PER_NODE={tasks_per_node!r} is not in Slurm's format")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    if not 0 <= node_id < len(counts):
        raise DistributedConfigError(f"SLURM_NODEID={node_id} is not a node of SLURM_TASKS_PER_NODE={tasks_per_node!r}")
    return counts[node_id]


# ----------------------------------------------------------------------------- modes


def _explicit(
    env: Mapping[str, str],
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    local_device_ids: Sequence[int] | None,
) -> ClusterSpec | None:
    """Flags, else SNOWJAX_* variables, else JAX_* ones; None if none of them names a coordinator."""
    if coordinator is not None or num_processes is not None or process_id is not None:
        names = ("--coordinator", "--num-processes", "--process-id")
        values = (coordinator, num_processes, process_id)
        source = "flags"
    else:
        for names in (
            ("SNOWJAX_COORDINATOR", "SNOWJAX_NUM_PROCESSES", "SNOWJAX_PROCESS_ID"),
            ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"),
        ):
            if env.get(names[0]):
                break
        else:
            return None
        values = (env[names[0]], *(_int(env, n) if env.get(n) else None for n in names[1:]))
        source = names[0]
    missing = [n for n, v in zip(names, values, strict=True) if v is None]
    if missing:
        raise DistributedConfigError(f"an explicit cluster needs {', '.join(names)}; missing {', '.join(missing)}")
    address, num, pid = str(values[0]), int(values[1]), int(values[2])  # type: ignore[arg-type]
    _check_address(address, names[0])
    _check_ids(num, pid, names[1], names[2])
    ids = tuple(local_device_ids) if local_device_ids is not None else None
    for var in ("SNOWJAX_LOCAL_DEVICE_IDS", "JAX_LOCAL_DEVICE_IDS"):
        if ids is None and env.get(var):
            ids = _device_ids(env[var], var)
    return ClusterSpec("explicit", address, num, pid, ids, source=source)


def _slurm(env: Mapping[str, str]) -> ClusterSpec | None:
    if "SLURM_JOB_ID" not in env or "SLURM_PROCID" not in env:
        return None
    num_var = "SLURM_NTASKS" if "SLURM_NTASKS" in env else "SLURM_NPROCS"
    if num_var not in env:
        raise DistributedConfigError("SLURM_PROCID is set but neither SLURM_NTASKS nor SLURM_NPROCS is")
    num, pid = _int(env, num_var), _int(env, "SLURM_PROCID")
    _check_ids(num, pid, num_var, "SLURM_PROCID")
    if num == 1:
        return None  # a one-task job (or a batch script outside srun): nothing to join
    nodelist_var = next(
        (v for v in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST") if env.get(v)), None
    )
    if nodelist_var is None:
        raise DistributedConfigError("SLURM_NTASKS > 1 but no SLURM_STEP_NODELIST / SLURM_JOB_NODELIST is set")
    host = expand_hostlist(env[nodelist_var])[0]
    if env.get("SNOWJAX_COORDINATOR_PORT"):
        port = _int(env, "SNOWJAX_COORDINATOR_PORT")
    else:  # one port per job, in the range JAX's own Slurm detection uses, so two jobs on a node don't collide
        port = 61440 + _int(env, "SLURM_JOB_ID") % 4096
    coordinator = _check_address(f"{host}:{port}", "SNOWJAX_COORDINATOR_PORT")
    return ClusterSpec("slurm", coordinator, num, pid, _slurm_local_devices(env), source=nodelist_var)


def _slurm_local_devices(env: Mapping[str, str]) -> tuple[int, ...] | None:
    """This task's GPUs when several tasks share a node's GPUs; None: all it sees."""
    if "SLURM_LOCALID" not in env:
        return None
    local_id = _int(env, "SLURM_LOCALID")
    if env.get("SLURM_NTASKS_PER_NODE"):
        local_tasks = _int(env, "SLURM_NTASKS_PER_NODE")
    elif env.get("SLURM_TASKS_PER_NODE"):
        local_tasks = _tasks_on_node(
            env["SLURM_TASKS_PER_NODE"], _int(env, "SLURM_NODEID") if "SLURM_NODEID" in env else 0
        )
    else:
        return None
    if local_tasks <= 1:
        return None
    if not 0 <= local_id < local_tasks:
        raise DistributedConfigError(f"SLURM_LOCALID={local_id} but only {local_tasks} tasks run on this node")
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    gpus = len([g for g in visible.split(",") if g.strip()]) if visible else None
    if gpus is None and env.get("SLURM_GPUS_ON_NODE"):
        gpus = _int(env, "SLURM_GPUS_ON_NODE")
    if gpus is None:
        return None  # no GPUs announced (CPU tasks): each process uses what it sees
    if visible and gpus < local_tasks:
        return None  # Slurm bound GPUs per task (--gpus-per-task / --gpu-bind): use the ones visible
    if gpus % local_tasks:
        raise DistributedConfigError(
            f"{local_tasks} tasks on this node cannot share its {gpus} GPUs evenly "
            "(SLURM_NTASKS_PER_NODE vs SLURM_GPUS_ON_NODE / CUDA_VISIBLE_DEVICES)"
        )
    per_task = gpus // local_tasks
    return tuple(range(local_id * per_task, (local_id + 1) * per_task))


def _tpu(env: Mapping[str, str], forced: bool) -> ClusterSpec | None:
    hosts_var = next((v for v in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES") if env.get(v)), None)
    hosts = [h.strip() for h in env[hosts_var].split(",") if h.strip()] if hosts_var else []
    if not forced and len(hosts) <= 1:
        return None
    num = len(hosts) or None
    pid = _int(env, "TPU_WORKER_ID") if env.get("TPU_WORKER_ID") else None
    if num is not None and pid is not None:
        _check_ids(num, pid, hosts_var or "", "TPU_WORKER_ID")
    coordinator = f"{hosts[0].rsplit(':', 1)[0]}:{TPU_COORDINATOR_PORT}" if hosts else None
    return ClusterSpec("tpu", coordinator, num, pid, None, source=hosts_var or "SNOWJAX_DISTRIBUTED=tpu")


def detect_environment(
    env: Mapping[str, str] | None = None,
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> ClusterSpec:
    """The cluster this process belongs to, from flags and ``env`` (default ``os.environ``).

    Precedence: flags, then ``SNOWJAX_DISTRIBUTED`` when it forces a mode, then the first of
    explicit variables, Slurm, a TPU pod; else a single process. Raises
    :class:`DistributedConfigError` for inconsistent settings (an id not below the count,
    a coordinator without a count, GPUs that tasks cannot share evenly, ...).
    """
    env = os.environ if env is None else env
    want = (env.get("SNOWJAX_DISTRIBUTED") or "auto").strip().lower()
    if want not in (*MODES, "auto"):
        raise DistributedConfigError(f"SNOWJAX_DISTRIBUTED={want!r} is not one of {[*MODES, 'auto']}")
    flags = coordinator is not None or num_processes is not None or process_id is not None
    if want == "single" and not flags:
        return ClusterSpec("single", source="SNOWJAX_DISTRIBUTED=single")
    explicit = _explicit(env, coordinator, num_processes, process_id, local_device_ids)
    if flags or want == "explicit":
        if explicit is None:
            raise DistributedConfigError("SNOWJAX_DISTRIBUTED=explicit but SNOWJAX_COORDINATOR is not set")
        return explicit
    if want == "slurm":
        spec = _slurm(env)
        if spec is None and "SLURM_PROCID" not in env:
            raise DistributedConfigError("SNOWJAX_DISTRIBUTED=slurm but SLURM_PROCID is not set (run under srun)")
        return spec or ClusterSpec("single", source="SLURM_NTASKS=1")
    if want == "tpu":
        return _tpu(env, forced=True)  # type: ignore[return-value]
    for spec in (explicit, _slurm(env), _tpu(env, forced=False)):
        if spec is not None:
            return spec
    if "SNOWJAX_DISTRIBUTED" in env:  # "auto" said out loud: let JAX look for a cluster itself
        return ClusterSpec("tpu", None, None, None, None, source="SNOWJAX_DISTRIBUTED=auto")
    return ClusterSpec("single", source="no cluster variables")


def initialize(spec: ClusterSpec) -> None:
    """Join the cluster ``spec`` describes (``jax.distributed.initialize``), then log who this process is.

    Idempotent: a process that already joined only logs. ``single`` joins nothing.
    """
    import jax

    if spec.mode != "single" and not jax.distributed.is_initialized():
        if spec.mode == "tpu":
            jax.distributed.initialize()
        else:
            ids = list(spec.local_device_ids) if spec.local_device_ids is not None else None
            jax.distributed.initialize(
                coordinator_address=spec.coordinator,
                num_processes=spec.num_processes,
                process_id=spec.process_id,
                local_device_ids=ids,
            )
    log.info("%s", describe_process(spec))


def describe_process(spec: ClusterSpec) -> str:
    """One line saying who this process is: "process i of n (mode), host, pid, local devices"."""
    import jax

    local = jax.local_devices()
    kinds = sorted({d.device_kind for d in local})
    return (
        f"process {jax.process_index()} of {jax.process_count()} ({spec.mode} via {spec.source or '-'}"
        f"{', coordinator ' + spec.coordinator if spec.coordinator else ''}) on host {socket.gethostname()} "
        f"pid {os.getpid()}: {len(local)} local devices {[d.id for d in local]} ({', '.join(kinds)}) "
        f"of {jax.device_count()}"
    )


def initialize_from_environment(**flags: object) -> ClusterSpec:
    """:func:`detect_environment` on ``os.environ`` (and any flags), then :func:`initialize`; returns the spec."""
    spec = detect_environment(**flags)  # type: ignore[arg-type]
    initialize(spec)
    return spec
