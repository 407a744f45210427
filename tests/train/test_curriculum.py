"""Three-phase curricula end to end: hand-offs, LR re-warmup, named checkpoints, exact resume, re-runs."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from snowjax.config import load_config
from snowjax.report import write_report
from snowjax.train.loop import train

MODEL = {
    "vocab_size": 512,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "num_kv_heads": 2,
    "ffn_size": 64,
    "max_seq_len": 64,
    "dtype": "float32",
    "param_dtype": "float32",
    "scan_layers": False,
}


def curriculum(data: Path, run_dir: Path) -> dict:
    """Three phases: a 70/30 mixture, a 4-epoch top set (tokens: 0), a stepwise mixture."""
    d = str(data)
    return {
        "run_dir": str(run_dir),
        "model": MODEL,
        "mesh": {"data": -1},
        "data": {"prefetch": 2},
        "train": {"global_batch_size": 8, "seq_len": 32, "log_every": 1, "tensorboard": False},
        "checkpoint": {"every_steps": 3, "keep_last": 20},
        "phases": [
            {
                "name": "general",
                "checkpoint_name": "alpha",
                "start": "scratch",
                "sources": [
                    {"name": "py", "path": d, "languages": ["python"], "weight": 0.7},
                    {"name": "java", "path": d, "languages": ["java"], "weight": 0.3},
                ],
                "steps": 9,
                "schedule": {"kind": "cosine", "peak_lr": 1e-2, "end_lr": 1e-3, "warmup_steps": 2},
            },
            {
                "name": "continued",
                "checkpoint_name": "beta",
                "sources": [{"name": "top", "path": d, "max_documents": 10, "epochs": 4}],
                "tokens": 0,
                "schedule": {"kind": "linear", "peak_lr": 1e-2, "end_lr": 0.0, "warmup_steps": 3},
            },
            {
                "name": "enhanced",
                "checkpoint_name": "final",
                "optimizer_state": "keep",
                "sources": [
                    {"name": "top", "path": d, "max_documents": 10},
                    {"name": "py", "path": d, "languages": ["python"]},
                ],
                "mixing": [{"step": 0, "weights": {"top": 0.3, "py": 0.7}}, {"step": 3, "weights": {"top": 1.0}}],
                "steps": 6,
                "schedule": {"kind": "linear", "peak_lr": 5e-3, "end_lr": 0.0, "warmup_steps": 2},
            },
        ],
    }


def write_config(data: Path, run_dir: Path, tmp: Path, **data_opts) -> Path:
    cfg = curriculum(data, run_dir)
    cfg["data"].update(data_opts)
    path = tmp / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def last_per_step(run_dir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            out[rec["step"]] = rec
    return out


@pytest.fixture(scope="module")
def reference(two_languages: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (8 simulated devices, one process)."""
    tmp = tmp_path_factory.mktemp("curriculum")
    run_dir = tmp / "ref"
    result = train(load_config(write_config(two_languages, run_dir, tmp)))
    assert result.phase == "enhanced" and not result.stopped_by_signal
    return run_dir


def test_phases_hand_off_with_named_checkpoints_and_exact_token_tables(reference: Path) -> None:
    plan = json.loads((reference / "plan.json").read_text())
    assert (plan[0]["phase"], plan[0]["start_step"], plan[0]["end_step"]) == ("general", 0, 9)
    p2 = plan[1]
    for name in ("alpha", "beta", "final"):
        assert any((reference / "phase_checkpoints" / name).iterdir()), name
    steps = last_per_step(reference)
    assert sorted(steps) == list(range(1, plan[-1]["end_step"] + 1))
    # Phase 2 re-warms from 0 and decays to 0 at its last step; phase 1 ended on its floor.
    lrs = [steps[s]["lr"] for s in range(p2["start_step"] + 1, p2["end_step"] + 1)]
    assert lrs[0] == 0.0 and lrs[-1] == 0.0 and max(lrs) == pytest.approx(1e-2)
    assert steps[9]["lr"] == pytest.approx(1e-3, rel=0.05)
    # Phase 2 drew exactly 4 epochs of its top set, as planned.
    report = json.loads((reference / "phases" / "continued.json").read_text())
    (top,) = report["sources"]
    assert top["seen_tokens"] == 4 * top["unique_tokens"] == top["planned_tokens"]
    assert top["epochs_completed"] == 4.0
    # Phase 1's mixture: every step is full, 70/30 as planned within a document or two.
    general = json.loads((reference / "phases" / "general.json").read_text())
    seen = [s["seen_tokens"] for s in general["sources"]]
    assert sum(seen) == 9 * 8 * 32 and general["padding_tokens"] == 0
    assert abs(seen[0] / sum(seen) - 0.7) < 0.05
    assert sum(lang["seen_tokens"] for lang in general["languages"]) == sum(seen)
    # Phase 3's stepwise schedule: the weights logged by step switch at its step 3.
    p3 = plan[2]["start_step"]
    assert steps[p3 + 1]["mix/top"] == pytest.approx(0.3) and steps[p3 + 4]["mix/top"] == 1.0
    out = write_report(reference)
    text = out.read_text()
    assert "| continued | beta |" in text and (reference / "plots" / "loss_lr.png").stat().st_size > 0


def _cli(config: Path, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "snowjax.cli", "train", str(config), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_when(proc: subprocess.Popen, cond, timeout: float = 240) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill point:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_killed_in_phase_1_at_the_boundary_and_in_phase_2_resumes_exactly(
    reference: Path, two_languages: Path, tmp_path: Path
) -> None:
    plan = json.loads((reference / "plan.json").read_text())
    end1, end2 = plan[0]["end_step"], plan[1]["end_step"]
    rng = random.Random(time.time_ns())
    run_dir = tmp_path / "killed"
    config = write_config(two_languages, run_dir, tmp_path)

    def reached(step: int):
        return lambda: max(last_per_step(run_dir), default=0) >= step

    kill_1 = rng.randrange(4, end1)  # after a periodic checkpoint, inside phase 1
    _kill_when(_cli(config), reached(kill_1))
    alpha = run_dir / "phase_checkpoints" / "alpha"
    _kill_when(_cli(config), lambda: alpha.exists() and any(p.name.isdigit() for p in alpha.iterdir()))
    kill_2 = rng.randrange(end1 + 4, end2)
    _kill_when(_cli(config), reached(kill_2))
    proc = _cli(config)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "resumed from checkpoint" in out

    ref, got = last_per_step(reference), last_per_step(run_dir)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step]["batch_crc"] == ref[step]["batch_crc"], (step, kill_1, kill_2)
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=1e-6), (step, kill_1, kill_2)
    for phase in ("general", "continued", "enhanced"):
        a = json.loads((reference / "phases" / f"{phase}.json").read_text())
        b = json.loads((run_dir / "phases" / f"{phase}.json").read_text())
        assert a["sources"] == b["sources"] and a["languages"] == b["languages"], phase


def test_rerunning_one_phase_starts_from_its_checkpoint_and_moves_later_ones_aside(
    reference: Path, two_languages: Path, tmp_path: Path
) -> None:
    import shutil

    run_dir = tmp_path / "rerun"
    shutil.copytree(reference, run_dir)
    config = write_config(two_languages, run_dir, tmp_path)
    before = last_per_step(reference)
    result = train(load_config(config), only_phase="continued")
    assert result.phase == "continued"
    plan = json.loads((reference / "plan.json").read_text())
    after = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rerun = after[len(before) :]
    assert [r["step"] for r in rerun] == list(range(plan[1]["start_step"] + 1, plan[1]["end_step"] + 1))
    for r in rerun:
        assert r["loss"] == pytest.approx(before[r["step"]]["loss"], rel=1e-5, abs=1e-6)
    moved = list((run_dir / "superseded").rglob("*"))
    assert any(p.name == "final" for p in moved) and any(p.name == str(plan[-1]["end_step"]) for p in moved)
    assert not (run_dir / "phase_checkpoints" / "final").exists()
    assert (run_dir / "phase_checkpoints" / "beta").exists()
    np.testing.assert_equal(
        json.loads((run_dir / "phases" / "continued.json").read_text())["sources"],
        json.loads((reference / "phases" / "continued.json").read_text())["sources"],
    )


REPO = Path(__file__).resolve().parents[2]


def _cluster(config: Path, log_dir: Path) -> subprocess.Popen:
    """Two processes x 4 CPU devices joined over loopback, started by launch/local/cluster.sh."""
    env = {
        **os.environ,
        "SNOWJAX_CMD": f"{sys.executable} -m snowjax.cli",
        "PYTHON": sys.executable,
        "SNOWJAX_KILL_GRACE": "2",
    }
    env.pop("XLA_FLAGS", None)  # the launcher sets each process's device count
    script = REPO / "launch" / "local" / "cluster.sh"
    cmd = ["bash", str(script), "--log-dir", str(log_dir), "2", "4", str(config)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _pid_of(log: Path) -> int | None:
    """The pid a trainer logged in its "process i of n ... pid N" line (snowjax.distributed)."""
    if not log.exists():
        return None
    found = re.search(r"process \d+ of \d+ .* pid (\d+)", log.read_text())
    return int(found.group(1)) if found else None


def test_two_process_cluster_trains_checkpoints_resumes_and_matches_one_process(
    two_languages: Path, tmp_path: Path
) -> None:
    # One process, 8 devices, 2 loader shards: the batches a 2-process run must reproduce.
    single_dir = tmp_path / "single"
    train(load_config(write_config(two_languages, single_dir, tmp_path, shards=2)))
    run_dir = tmp_path / "cluster"
    config = write_config(two_languages, run_dir, tmp_path, shards=2)
    plan = json.loads((single_dir / "plan.json").read_text())
    kill_at = plan[0]["end_step"] + 4  # inside phase 2, after a periodic checkpoint

    # A member dies (SIGKILL to process 1): the launcher stops process 0 and fails.
    launcher = _cluster(config, tmp_path / "logs1")
    t0 = time.time()
    while max(last_per_step(run_dir), default=0) < kill_at:
        assert launcher.poll() is None, launcher.communicate()[0][-3000:]
        assert time.time() - t0 < 300, "timed out"
        time.sleep(0.05)
    pid1 = _pid_of(tmp_path / "logs1" / "process_1.log")
    assert pid1 is not None
    os.kill(pid1, signal.SIGKILL)
    out, _ = launcher.communicate(timeout=60)
    assert launcher.returncode != 0 and "process 1 (pid" in out, out[-3000:]

    # Started again, both processes resume from the last complete checkpoint and finish.
    launcher = _cluster(config, tmp_path / "logs2")
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out[-3000:]
    logs = [(tmp_path / "logs2" / f"process_{i}.log").read_text() for i in range(2)]
    assert all("resumed from checkpoint" in log for log in logs)
    assert "process 1 of 2 (explicit" in logs[1] and "process 0 of 2 (explicit" in logs[0]

    ref, got = last_per_step(single_dir), last_per_step(run_dir)
    assert sorted(got) == sorted(ref)
    for step in ref:
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-5, abs=1e-6), step
    # Both processes' iterator states are in the checkpoints, and the token tables agree.
    last = max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    iter_dir = run_dir / "checkpoints" / str(last) / "data_iter"
    assert sorted(p.name for p in iter_dir.iterdir() if p.name.startswith("process_")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    for phase in ("general", "continued", "enhanced"):
        a = json.loads((single_dir / "phases" / f"{phase}.json").read_text())
        b = json.loads((run_dir / "phases" / f"{phase}.json").read_text())
        assert a["sources"] == b["sources"] and a["languages"] == b["languages"], phase


def test_a_phase_can_start_from_another_runs_checkpoint(reference: Path, two_languages: Path, tmp_path: Path) -> None:
    """start: checkpoint + init_from: phase 2 alone, from the reference's alpha, repeats the reference's phase 2."""
    cfg = curriculum(two_languages, tmp_path / "from_alpha")
    phase2 = cfg["phases"][1]
    phase2.update(start="checkpoint", init_from=str(reference / "phase_checkpoints" / "alpha"))
    cfg["phases"] = [phase2]
    path = tmp_path / "from_alpha.yaml"
    path.write_text(yaml.safe_dump(cfg))
    train(load_config(path))
    plan = json.loads((reference / "plan.json").read_text())
    ref = last_per_step(reference)
    got = last_per_step(tmp_path / "from_alpha")
    offset = plan[1]["start_step"]
    assert sorted(got) == [s - offset for s in range(offset + 1, plan[1]["end_step"] + 1)]
    for step, rec in got.items():
        assert rec["loss"] == pytest.approx(ref[step + offset]["loss"], rel=1e-5, abs=1e-6), step
        assert rec["lr"] == pytest.approx(ref[step + offset]["lr"])
