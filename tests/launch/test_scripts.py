"""The launch scripts: dry runs print the expected commands, `bash -n` and shellcheck pass, XLA accepts our flags."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
SCRIPTS = sorted([*LAUNCH.rglob("*.sh"), *LAUNCH.rglob("*.sbatch")])
TPU = {"TPU_PROJECT": "my-project", "TPU_ZONE": "us-east5-a", "TPU_NAME": "snow", "PATH": os.environ["PATH"]}


def run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args],
        env=env if env is not None else {"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def lines(result: subprocess.CompletedProcess) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def test_every_script_parses_and_passes_shellcheck() -> None:
    assert {p.name for p in SCRIPTS} >= {"cluster.sh", "create.sh", "install.sh", "run.sh", "teardown.sh"}
    for script in SCRIPTS:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        # CI must run it: `make test` installs Debian's shellcheck when apt-get can.
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed (apt-get install shellcheck); CI requires it")
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = subprocess.run(
        [shellcheck, "--external-sources", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tpu_dry_runs_print_every_gcloud_command() -> None:
    env = {**TPU, "TPU_ACCELERATOR_TYPE": "v5p-32", "TPU_RUNTIME_VERSION": "v2-alpha-tpuv5", "TPU_SPOT": "1"}
    (create, describe) = lines(run("tpu/create.sh", "--dry-run", env=env))
    assert create == [
        *"gcloud compute tpus queued-resources create snow-qr --project my-project --zone us-east5-a".split(),
        *"--node-id snow --accelerator-type v5p-32 --runtime-version v2-alpha-tpuv5 --spot".split(),
    ]
    assert describe[:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]

    archive, scp, ssh = lines(run("tpu/install.sh", "--dry-run", env=env))
    assert archive[:3] == ["git", "-C", str(REPO)] and "archive" in archive
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "snow"] and "--worker=all" in ssh
    remote = ssh[ssh.index("--command") + 1]
    assert "pip install -q -c constraints.txt -e . 'jax[tpu]==" in remote
    (clone,) = [c for c in lines(run("tpu/install.sh", "--dry-run", env={**env, "SNOWJAX_GIT_URL": "https://x/y.git"}))]
    assert "git clone --quiet https://x/y.git snowjax" in clone[clone.index("--command") + 1]

    # v5p-32: 32 TensorCores, 4 hosts: one ssh per worker, each with its own log.
    logged = {**env, "TPU_LOG_DIR": "L"}
    out = lines(run("tpu/run.sh", "--dry-run", "train", "cfg.yaml", "run_dir=gs://b/r", env=logged))
    assert len(out) == 4
    for w, cmd in enumerate(out):
        assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "snow"]
        assert f"--worker={w}" in cmd and cmd[-4:] == [">", f"L/worker_{w}.log", "2>&1", "&"]
        assert cmd[cmd.index("--command") + 1] == (
            "cd snowjax && SNOWJAX_DISTRIBUTED=tpu PYTHONUNBUFFERED=1 .venv/bin/snowjax train cfg.yaml run_dir=gs://b/r"
        )
    (delete,) = lines(run("tpu/teardown.sh", "--dry-run", env=env))
    assert delete == [
        *"gcloud compute tpus queued-resources delete snow-qr --project my-project --zone us-east5-a".split(),
        "--force",
        "--quiet",
    ]


def test_tpu_scripts_refuse_missing_configuration() -> None:
    result = run("tpu/create.sh", "--dry-run", env={"PATH": os.environ["PATH"], "TPU_ZONE": "z", "TPU_NAME": "n"})
    assert result.returncode != 0 and "TPU_PROJECT" in result.stderr


def test_gpu_dry_runs_print_srun_and_environment() -> None:
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_NUM_NODES": "8", "SLURM_GPUS_ON_NODE": "8"}
    per_node = lines(run("gpu/slurm.sbatch", "--dry-run", "c.yaml", "train.steps=5", env=env))
    exports = {words[1].split("=", 1)[0]: words[1].split("=", 1)[1] for words in per_node if words[0] == "export"}
    assert exports["SNOWJAX_DISTRIBUTED"] == "slurm"
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in exports["XLA_FLAGS"].split()
    assert per_node[-1] == [
        *"srun --nodes=8 --ntasks-per-node=1 --kill-on-bad-exit=1 snowjax train c.yaml train.steps=5".split(),
        "model.attention=cudnn",
    ]
    per_gpu = lines(run("gpu/slurm.sbatch", "--per-gpu", "--dry-run", "c.yaml", env=env))
    assert "--ntasks-per-node=8" in per_gpu[-1]
    module = {**env, "SNOWJAX_CMD": "python -m snowjax.cli"}
    single = lines(run("gpu/single_node.sh", "--dry-run", "c.yaml", env=module))
    assert single[-1] == ["python", "-m", "snowjax.cli", "train", "c.yaml", "model.attention=cudnn"]
    assert ["export", "SNOWJAX_DISTRIBUTED=single"] in single


def test_xla_accepts_the_gpu_flags() -> None:
    """An unknown XLA flag aborts every JAX process at start-up: parse ours with this jaxlib."""
    flags = subprocess.run(
        ["bash", "-c", f'source {LAUNCH / "gpu/env.sh"} && printf %s "$XLA_FLAGS"'],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        check=True,
    ).stdout
    assert flags.count("--xla_") >= 8
    proc = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.devices()[0].platform)"],
        env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "cpu", proc.stderr[-2000:]


def test_local_dry_run_and_argument_checks() -> None:
    env = {"PATH": os.environ["PATH"], "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/d"}
    out = lines(run("local/cluster.sh", "--dry-run", "--port", "4321", "--log-dir", "L", "2", "4", "c.yaml", env=env))
    assert len(out) == 2
    for i, cmd in enumerate(out):
        assert cmd[:2] == ["env", "JAX_PLATFORMS=cpu"]
        # Our device count replaces the caller's; its other XLA flags stay.
        name, flags = cmd[2].split("=", 1)
        assert name == "XLA_FLAGS"
        assert flags.split() == ["--xla_dump_to=/tmp/d", "--xla_force_host_platform_device_count=4"]
        assert cmd[3:7] == [
            "SNOWJAX_DISTRIBUTED=explicit",
            "SNOWJAX_COORDINATOR=127.0.0.1:4321",
            "SNOWJAX_NUM_PROCESSES=2",
            f"SNOWJAX_PROCESS_ID={i}",
        ]
        assert cmd[7:] == ["snowjax", "train", "c.yaml", ">", f"L/process_{i}.log", "2>&1", "&"]
    bad = run("local/cluster.sh", "--dry-run", "two", "4", "c.yaml")
    assert bad.returncode == 2 and "NPROC NDEV" in bad.stderr


def test_local_cluster_stops_the_others_when_one_process_fails(tmp_path: Path) -> None:
    """A failing member ends the run: the survivors are stopped and the failure's status is returned."""
    worker = tmp_path / "worker.sh"
    # Process 1 fails at once; process 0 would run for a minute.
    worker.write_text(
        '#!/usr/bin/env bash\necho "I am $SNOWJAX_PROCESS_ID of $SNOWJAX_NUM_PROCESSES via $SNOWJAX_COORDINATOR"\n'
        "if [[ $SNOWJAX_PROCESS_ID == 1 ]]; then sleep 0.5; exit 3; fi\nsleep 60\n"
    )
    worker.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "SNOWJAX_CMD": str(worker), "SNOWJAX_KILL_GRACE": "1", "PYTHON": sys.executable}
    t0 = time.monotonic()
    result = run("local/cluster.sh", "--log-dir", str(tmp_path / "logs"), "2", "1", "c.yaml", env=env)
    assert time.monotonic() - t0 < 30  # process 0 (and its sleep) was stopped, not waited for
    assert result.returncode == 3, result.stderr
    assert "process 1 (pid" in result.stderr and "stopping the others" in result.stderr
    log0 = (tmp_path / "logs" / "process_0.log").read_text()
    assert log0.startswith("I am 0 of 2 via 127.0.0.1:")
    assert "[p1] I am 1 of 2" in result.stdout
