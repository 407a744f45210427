"""Environment detection: simulated Slurm, explicit-coordinator and TPU environments pick the right mode and values."""

from __future__ import annotations

import pytest

from snowjax.config import ConfigError
from snowjax.distributed import ClusterSpec, DistributedConfigError, detect_environment, expand_hostlist

SLURM_PER_NODE = {  # 4 nodes x 1 task, this is task 2
    "SLURM_JOB_ID": "123456",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "2",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "2",
    "SLURM_STEP_NODELIST": "gpu-h100-[007-009,012]",
    "SLURM_TASKS_PER_NODE": "1(x4)",
    "SLURM_GPUS_ON_NODE": "8",
}


def test_nothing_set_is_a_single_process() -> None:
    assert detect_environment({}) == ClusterSpec("single", source="no cluster variables")


def test_slurm_one_process_per_node_uses_all_local_gpus() -> None:
    spec = detect_environment(SLURM_PER_NODE)
    assert spec.mode == "slurm"
    assert (spec.num_processes, spec.process_id, spec.local_device_ids) == (4, 2, None)
    # First host of the step, on the job's port (61440 + job id mod 4096, as JAX's Slurm detection).
    assert spec.coordinator == f"gpu-h100-007:{61440 + 123456 % 4096}"
    assert detect_environment({**SLURM_PER_NODE, "SNOWJAX_COORDINATOR_PORT": "5555"}).coordinator == "gpu-h100-007:5555"


def test_slurm_one_process_per_gpu_takes_its_gpu_by_local_id() -> None:
    env = {
        **SLURM_PER_NODE,
        "SLURM_NTASKS": "16",
        "SLURM_PROCID": "13",
        "SLURM_LOCALID": "5",
        "SLURM_NODEID": "1",
        "SLURM_TASKS_PER_NODE": "8(x2)",
        "SLURM_STEP_NODELIST": "node[1-2]",
    }
    spec = detect_environment(env)
    assert (spec.mode, spec.num_processes, spec.process_id, spec.local_device_ids) == ("slurm", 16, 13, (5,))
    assert spec.coordinator.startswith("node1:")
    # Two tasks per 8-GPU node: four GPUs each.
    two = {**env, "SLURM_NTASKS_PER_NODE": "2", "SLURM_LOCALID": "1", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"}
    assert detect_environment(two).local_device_ids == (4, 5, 6, 7)
    # Slurm already bound one GPU per task: use the one visible.
    assert detect_environment({**env, "CUDA_VISIBLE_DEVICES": "5"}).local_device_ids is None
    with pytest.raises(DistributedConfigError, match="cannot share its 8 GPUs"):
        detect_environment({**env, "SLURM_NTASKS_PER_NODE": "3", "SLURM_LOCALID": "1"})


def test_slurm_single_task_and_inconsistent_slurm() -> None:
    assert detect_environment({**SLURM_PER_NODE, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).mode == "single"
    with pytest.raises(DistributedConfigError, match="SLURM_PROCID=4 is not a process id of a 4-process"):
        detect_environment({**SLURM_PER_NODE, "SLURM_PROCID": "4"})
    with pytest.raises(DistributedConfigError, match="SLURM_NTASKS='x'"):
        detect_environment({**SLURM_PER_NODE, "SLURM_NTASKS": "x"})
    with pytest.raises(DistributedConfigError, match="run under srun"):
        detect_environment({"SNOWJAX_DISTRIBUTED": "slurm"})


def test_hostlists_expand_like_slurm() -> None:
    assert expand_hostlist("a[01-03,7],b,c[9-10]") == ["a01", "a02", "a03", "a7", "b", "c9", "c10"]
    assert expand_hostlist("rack[1-2]-n[1-2]") == ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]
    with pytest.raises(DistributedConfigError, match="descending"):
        expand_hostlist("n[5-3]")


def test_explicit_coordinator_from_env_and_flags() -> None:
    env = {"SNOWJAX_COORDINATOR": "10.0.0.1:1234", "SNOWJAX_NUM_PROCESSES": "2", "SNOWJAX_PROCESS_ID": "1"}
    spec = detect_environment(env)
    assert (spec.mode, spec.coordinator, spec.num_processes, spec.process_id) == ("explicit", "10.0.0.1:1234", 2, 1)
    # JAX's own variable names work too, and explicit settings win over Slurm's.
    jax_env = {"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "3", "JAX_PROCESS_ID": "0"}
    assert detect_environment({**SLURM_PER_NODE, **jax_env}).mode == "explicit"
    assert detect_environment({**env, "SNOWJAX_LOCAL_DEVICE_IDS": "0,1"}).local_device_ids == (0, 1)
    # Flags win over the environment.
    flagged = detect_environment(env, coordinator="127.0.0.1:7", num_processes=4, process_id=3)
    assert (flagged.coordinator, flagged.num_processes, flagged.process_id, flagged.source) == (
        "127.0.0.1:7",
        4,
        3,
        "flags",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SNOWJAX_COORDINATOR": "h:1", "SNOWJAX_NUM_PROCESSES": "2", "SNOWJAX_PROCESS_ID": "2"}, "PROCESS_ID=2"),
        ({"SNOWJAX_COORDINATOR": "h:1", "SNOWJAX_NUM_PROCESSES": "0", "SNOWJAX_PROCESS_ID": "0"}, "must be >= 1"),
        ({"SNOWJAX_COORDINATOR": "h:1", "SNOWJAX_PROCESS_ID": "0"}, "missing SNOWJAX_NUM_PROCESSES"),
        ({"SNOWJAX_COORDINATOR": "nohost", "SNOWJAX_NUM_PROCESSES": "2", "SNOWJAX_PROCESS_ID": "0"}, "host:port"),
        ({"SNOWJAX_COORDINATOR": "h:99999", "SNOWJAX_NUM_PROCESSES": "2", "SNOWJAX_PROCESS_ID": "0"}, "host:port"),
        ({"SNOWJAX_DISTRIBUTED": "explicit"}, "SNOWJAX_COORDINATOR is not set"),
        ({"SNOWJAX_DISTRIBUTED": "pods"}, "not one of"),
    ],
)
def test_inconsistent_explicit_settings_are_refused_with_the_variable_named(env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        detect_environment(env)


def test_tpu_pod_and_forced_modes() -> None:
    pod = {"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4", "TPU_WORKER_ID": "3"}
    spec = detect_environment(pod)
    assert (spec.mode, spec.num_processes, spec.process_id, spec.coordinator) == ("tpu", 4, 3, "t1:8476")
    assert detect_environment({"TPU_WORKER_HOSTNAMES": "t1"}).mode == "single"  # one host: nothing to join
    forced = detect_environment({"SNOWJAX_DISTRIBUTED": "tpu"})  # launch/tpu/run.sh: JAX reads the metadata
    assert (forced.mode, forced.num_processes, forced.process_id) == ("tpu", None, None)
    assert detect_environment({**SLURM_PER_NODE, "SNOWJAX_DISTRIBUTED": "single"}).mode == "single"
