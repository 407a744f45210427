"""Device mesh, logical-axis rules, shardings and multi-host set-up.

Physical mesh axes: ``data`` (replicated parameters), ``fsdp`` (data parallel
with parameters and optimizer state sharded), ``tensor`` (heads / FFN split).
Model code names tensor dimensions logically ("embed", "heads", "batch", ...);
:data:`LOGICAL_RULES` maps each name to mesh axes, once, here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from snowjax.config import ConfigError, MeshConfig, resolve_mesh_shape

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes (None: replicated). Parameters shard their "embed"
# dimension over fsdp and their head/FFN/vocab dimension over tensor; the batch
# of activations is split over every data-parallel axis.
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "act_embed": None,
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "layers": None,
    "cache_length": None,  # the KV cache's slots (generation)
}


def logical_to_spec(names: Sequence[str | None], rules: Mapping[str, Any] = LOGICAL_RULES) -> PartitionSpec:
    """PartitionSpec for a tensor whose dimensions have these logical names.

    A mesh axis is used at most once per tensor: a later dimension that maps to an
    axis already taken is replicated instead.
    """
    used: set[str] = set()
    out: list[Any] = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_RULES")
        axes = rules[name]
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes_t = tuple(a for a in axes_t if a not in used)
        used.update(axes_t)
        out.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return PartitionSpec(*out)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build the (data, fsdp, tensor) mesh; refuses shapes that don't match the devices."""
    devices = list(devices if devices is not None else jax.devices())
    shape = resolve_mesh_shape(cfg, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except Exception:
        grid = np.asarray(devices).reshape(shape)
    # Auto axes: XLA propagates shardings between our explicit constraints
    # (Explicit axes would reject contractions over sharded dims; DESIGN.md).
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical names; a no-op outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def _variable_names(var: Any) -> tuple[str | None, ...] | None:
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    names = meta.get("out_sharding") or meta.get("sharding_names")
    return tuple(names) if names else None


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedShardings for an ``nnx.State`` (abstract or concrete) from its logical names.

    Variables without names, and scalars, are replicated.
    """
    from flax import nnx

    def one(var: Any) -> Any:
        names = _variable_names(var) if isinstance(var, nnx.Variable) else None
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        if names is None or not len(getattr(value, "shape", ())):
            return (
                var.replace(NamedSharding(mesh, PartitionSpec()))
                if isinstance(var, nnx.Variable)
                else NamedSharding(mesh, PartitionSpec())
            )
        spec = logical_to_spec(names)
        return var.replace(NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a (batch, length) input array: rows over all data-parallel axes."""
    return NamedSharding(mesh, logical_to_spec(("batch", "length")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def to_global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble each host's rows (local_batch, T) into global (global_batch, T) jax.Arrays."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def initialize_distributed(**flags: Any) -> Any:
    """Join the multi-process run the environment (or ``flags``) describes; returns its ClusterSpec.

    Kept for callers of the old name: the detection (explicit coordinator, Slurm, TPU pod,
    single process) and the start-up live in :mod:`snowjax.distributed`.
    """
    from snowjax.distributed import initialize_from_environment

    return initialize_from_environment(**flags)


def check_batch_fits_mesh(global_batch: int, mesh: Mesh) -> None:
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % dp:
        raise ConfigError(
            f"train.global_batch_size: microbatch {global_batch} is not divisible by the data-parallel size {dp}"
        )
