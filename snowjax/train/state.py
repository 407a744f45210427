"""Train state: parameters, optimizer state and step, created directly sharded.

The state is a plain pytree (so Orbax saves and restores it as is). Its
shardings come from the parameters' logical axis names; the optimizer moments
inherit them, and scalars (step, Adam's count) are replicated over the mesh,
which is also what a restore target needs so nothing lands on one device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from snowjax.config import ModelConfig
from snowjax.model.decoder import Decoder
from snowjax.parallel import LOGICAL_RULES, state_shardings


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any  # nnx.State of the decoder's Params
    opt_state: Any  # optax state over params


def _make_model(cfg: ModelConfig, seed: int) -> Decoder:
    return Decoder(cfg, nnx.Rngs(params=seed))


def model_graphdef(cfg: ModelConfig) -> tuple[nnx.GraphDef, Any]:
    """The model's graph definition and abstract (shape-only) parameter state."""
    # Flax attaches shardings to abstract variables when a mesh is active; give it
    # our rules so it can read the logical names (we recompute shardings anyway).
    with nnx.logical_axis_rules(tuple(LOGICAL_RULES.items())):
        abstract = nnx.eval_shape(lambda: _make_model(cfg, 0))
    graphdef, params = nnx.split(abstract)
    return graphdef, params


def _shardings_of(tree: Any, mesh: Mesh) -> Any:
    """Shardings for any pytree holding nnx Variables (logical names) and plain arrays."""
    # Same structure as ``tree`` (Variables holding NamedShardings), so it can be
    # zipped with the state and used as jit's in/out shardings as is.
    return state_shardings(tree, mesh)


def abstract_train_state(
    cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh
) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """Graphdef, abstract TrainState (ShapeDtypeStructs with shardings) and its shardings."""
    graphdef, params = model_graphdef(cfg)
    opt_state = jax.eval_shape(tx.init, params)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state)
    shardings = TrainState(
        step=NamedSharding(mesh, PartitionSpec()),
        params=_shardings_of(params, mesh),
        opt_state=_shardings_of(opt_state, mesh),
    )
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return graphdef, abstract, shardings


def init_train_state(
    cfg: ModelConfig, tx: optax.GradientTransformation, shardings: TrainState, seed: int
) -> TrainState:
    """Initialise parameters and optimizer state, each created on its own shards."""

    def init() -> TrainState:
        _, params = nnx.split(_make_model(cfg, seed))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return jax.jit(init, out_shardings=shardings)()


def param_count(state: TrainState) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(state.params))
