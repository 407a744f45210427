"""Sharding: the same step on one device and on a (2, 2, 2) mesh of 8 simulated devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import tiny_model
from jax.sharding import PartitionSpec

from snowjax.config import MeshConfig, OptimizerConfig, ScheduleConfig
from snowjax.parallel import logical_to_spec, make_mesh, to_global_batch
from snowjax.train.optimizer import make_optimizer
from snowjax.train.schedules import make_schedule
from snowjax.train.state import abstract_train_state, init_train_state
from snowjax.train.step import jit_train_step, make_train_step

CFG = tiny_model()
B, T = 8, 32


def _batches(n: int) -> list[dict[str, np.ndarray]]:
    """Packed-looking batches: two documents per row and some padding."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        toks = rng.integers(4, CFG.vocab_size, (B, T + 1)).astype(np.int32)
        seg = np.ones((B, T), np.int32)
        seg[:, 20:] = 2
        seg[::3, -5:] = 0
        pos = np.concatenate([np.arange(20), np.arange(T - 20)])[None].repeat(B, 0).astype(np.int32)
        out.append({"inputs": toks[:, :-1], "targets": toks[:, 1:], "segment_ids": seg, "positions": pos})
    return out


def _run(mesh_cfg: MeshConfig, devices: list, accum: int, steps: int = 3) -> tuple[list[float], list[np.ndarray]]:
    tx = make_optimizer(OptimizerConfig(), 1.0)
    schedule = make_schedule(ScheduleConfig(kind="constant", peak_lr=3e-3, warmup_steps=0), steps)
    mesh = make_mesh(mesh_cfg, devices)
    with jax.set_mesh(mesh):
        graphdef, _, shardings = abstract_train_state(CFG, tx, mesh)
        state = init_train_state(CFG, tx, shardings, seed=0)
        step = jit_train_step(make_train_step(graphdef, tx, schedule, accum), shardings, mesh)
        losses = []
        for batch in _batches(steps):
            state, metrics = step(state, to_global_batch(batch, mesh))
            losses.append(float(metrics["loss"]))
        if mesh.size > 1:  # parameters really are sharded as the rules say
            assert state.params["embed"].sharding.spec == PartitionSpec("tensor", "fsdp")
        return losses, [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


@pytest.fixture(scope="module")
def single_device() -> tuple[list[float], list[np.ndarray]]:
    return _run(MeshConfig(data=1), jax.devices()[:1], accum=1)


@pytest.mark.parametrize(
    ("mesh_cfg", "accum"),
    [
        (MeshConfig(data=2, fsdp=2, tensor=2), 1),
        (MeshConfig(data=2, fsdp=2, tensor=2), 2),
        (MeshConfig(data=1, fsdp=8, tensor=1), 1),
    ],
)
def test_sharded_steps_match_one_device(single_device, mesh_cfg: MeshConfig, accum: int) -> None:
    ref_losses, ref_params = single_device
    losses, params = _run(mesh_cfg, jax.devices(), accum)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert losses[-1] < losses[0]  # the steps did update the parameters
    # Each step moves a parameter by up to ~lr = 3e-3; Adam's normalisation turns
    # summation-order noise in near-zero gradients into at most a few % of that.
    for a, b in zip(params, ref_params, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_logical_rules_never_use_a_mesh_axis_twice() -> None:
    assert logical_to_spec(("batch", "length", "heads", "head_dim")) == PartitionSpec(
        ("data", "fsdp"), None, "tensor", None
    )
    assert logical_to_spec(("vocab", "embed")) == PartitionSpec("tensor", "fsdp")
    # "embed" wants fsdp, already taken by "batch": replicated instead of an invalid spec.
    assert logical_to_spec(("batch", "embed")) == PartitionSpec(("data", "fsdp"), None)
    with pytest.raises(KeyError, match="no rule"):
        logical_to_spec(("nonsense",))
