"""The per-device memory estimate against what XLA reports for the compiled train step on CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from helpers import tiny_model

from snowjax.config import MeshConfig, OptimizerConfig, ScheduleConfig
from snowjax.parallel import batch_sharding, make_mesh
from snowjax.train.memory import estimate_train_memory, xla_step_bytes
from snowjax.train.optimizer import make_optimizer
from snowjax.train.schedules import make_schedule
from snowjax.train.state import abstract_train_state
from snowjax.train.step import BATCH_KEYS, jit_train_step, make_train_step


def compiled_step_bytes(model, mesh_cfg: MeshConfig, devices: int, batch: int, seq: int) -> int:
    """XLA's per-device bytes for the real train step (donated state), compiled from shapes only."""
    mesh = make_mesh(mesh_cfg, jax.devices()[:devices])
    tx = make_optimizer(OptimizerConfig(), 1.0)
    with jax.set_mesh(mesh):
        graphdef, abstract, shardings = abstract_train_state(model, tx, mesh)
        step = jit_train_step(make_train_step(graphdef, tx, make_schedule(ScheduleConfig(), 10), 1), shardings, mesh)
        rows = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=batch_sharding(mesh))
        compiled = step.lower(abstract, dict.fromkeys(BATCH_KEYS, rows)).compile()
    return xla_step_bytes(compiled.memory_analysis())


@pytest.mark.parametrize("remat", ["none", "full"])
@pytest.mark.parametrize(
    ("mesh", "devices", "batch"),
    [(MeshConfig(data=1), 1, 8), (MeshConfig(data=1, fsdp=4), 4, 16)],
    ids=["one-device", "fsdp4"],
)
def test_estimate_is_within_15_percent_of_xla(remat: str, mesh: MeshConfig, devices: int, batch: int) -> None:
    model = tiny_model(remat=remat, max_seq_len=64)
    seq = 64
    measured = compiled_step_bytes(model, mesh, devices, batch, seq)
    est = estimate_train_memory(model, {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}, batch, seq)
    assert est.total == pytest.approx(measured, rel=0.15), (est, measured)


def test_estimate_parts_follow_the_levers() -> None:
    """Remat, sharding and the fused kernel move the parts they should (the 1.3B model at seq 8192)."""
    big = tiny_model(
        vocab_size=64000, hidden_size=2048, num_layers=24, num_heads=16, num_kv_heads=16, ffn_size=5632,
        max_seq_len=8192, dtype="bfloat16", param_dtype="float32",
    )  # fmt: skip
    none = estimate_train_memory(big, {"fsdp": 1}, 1, 8192)
    full = estimate_train_memory(tiny_model(**{**big.__dict__, "remat": "full"}), {"fsdp": 1}, 1, 8192)
    assert none.params == 1_364_297_728 * 4 and none.optimizer == 2 * none.params == 2 * none.gradients
    assert full.saved_activations < none.saved_activations / 20
    sharded = estimate_train_memory(big, {"fsdp": 64}, 64, 8192)
    assert sharded.params == pytest.approx(none.params / 64, rel=0.01) and sharded.rows_per_device == 1
    cudnn = estimate_train_memory(tiny_model(**{**big.__dict__, "attention": "cudnn"}), {"fsdp": 1}, 1, 8192)
    assert cudnn.saved_activations < none.saved_activations / 5  # no (T x T) scores kept
    assert "total" in none.table()
