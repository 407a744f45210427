"""Optimizer: weight-decay mask, AdamW decay only where masked, clipping, parameter count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from snowjax.config import OptimizerConfig
from snowjax.train.optimizer import count_params, decay_mask, make_optimizer


def constant(lr: float) -> optax.Schedule:
    return lambda step: jnp.asarray(lr, jnp.float32)


def nested_params() -> dict:
    return {
        "embed": {"embedding": jnp.ones((10, 4))},
        "layers": {  # stacked over 3 layers, as with scan_layers
            "attn_norm": {"scale": jnp.ones((3, 4))},
            "attn": {"q_proj": {"kernel": jnp.ones((3, 4, 4))}},
            "mlp": {"up": {"kernel": jnp.ones((3, 4, 8)), "bias": jnp.ones((3, 8))}},
            "mlp_norm": {"scale": jnp.ones((3, 4))},
        },
        "final_norm": {"scale": jnp.ones((4,))},
        "head": {"kernel": jnp.ones((4, 10)), "bias": jnp.ones((10,))},
        "temperature": jnp.ones(()),
    }


def test_decay_mask_nested_dict() -> None:
    mask = decay_mask(nested_params())
    assert mask == {
        "embed": {"embedding": True},
        "layers": {
            "attn_norm": {"scale": False},
            "attn": {"q_proj": {"kernel": True}},
            "mlp": {"up": {"kernel": True, "bias": False}},
            "mlp_norm": {"scale": False},
        },
        "final_norm": {"scale": False},
        "head": {"kernel": True, "bias": False},
        "temperature": False,
    }


def test_decay_mask_abstract_shapes() -> None:
    abstract = jax.eval_shape(nested_params)
    assert decay_mask(abstract) == decay_mask(nested_params())


class Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embedding = nnx.Embed(10, 4, rngs=rngs)
        self.attn_norm = nnx.RMSNorm(4, rngs=rngs)
        self.proj = nnx.Linear(4, 4, use_bias=True, rngs=rngs)


def test_decay_mask_nnx_state() -> None:
    state = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)
    flat = {
        "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): bool(v)
        for path, v in jax.tree_util.tree_flatten_with_path(decay_mask(state))[0]
    }
    assert flat == {
        "attn_norm/scale/value": False,
        "embedding/embedding/value": True,
        "proj/bias/value": False,
        "proj/kernel/value": True,
    }


def test_adamw_decays_kernel_not_norm() -> None:
    params = {"proj": {"kernel": jnp.ones((4, 4))}, "attn_norm": {"scale": jnp.ones((2, 4))}, "b": jnp.ones((4,))}
    cfg = OptimizerConfig(weight_decay=0.5, grad_clip=1.0)
    tx = make_optimizer(cfg, constant(0.1))
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, state = jax.jit(tx.update)(zero, state, params)
    new = optax.apply_updates(params, updates)
    # Zero gradient: Adam's step is 0, only decoupled decay lr * wd * p = 0.05 acts.
    np.testing.assert_allclose(new["proj"]["kernel"], 0.95, rtol=1e-6)
    np.testing.assert_array_equal(new["attn_norm"]["scale"], 1.0)
    np.testing.assert_array_equal(new["b"], 1.0)


def test_nnx_optimizer_integration() -> None:
    model = Tiny(nnx.Rngs(0))
    before = jax.tree.map(lambda x: np.array(x), nnx.state(model, nnx.Param))
    opt = nnx.Optimizer(model, make_optimizer(OptimizerConfig(weight_decay=0.5), constant(0.1)), wrt=nnx.Param)

    @nnx.jit
    def step(model: Tiny, opt: nnx.Optimizer) -> None:
        grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
        opt.update(model, grads)

    step(model, opt)
    after = nnx.state(model, nnx.Param)
    np.testing.assert_array_equal(after["attn_norm"]["scale"][...], before["attn_norm"]["scale"][...])
    np.testing.assert_array_equal(after["proj"]["bias"][...], before["proj"]["bias"][...])
    np.testing.assert_allclose(after["proj"]["kernel"][...], 0.95 * before["proj"]["kernel"][...], rtol=1e-6)
    np.testing.assert_allclose(
        after["embedding"]["embedding"][...], 0.95 * before["embedding"]["embedding"][...], rtol=1e-6
    )


@pytest.mark.parametrize(("clip", "expected_norm"), [(1.0, 1.0), (0.0, 10.0), (20.0, 10.0)])
def test_global_norm_clipping(clip: float, expected_norm: float) -> None:
    params = {"a": jnp.zeros((3, 4)), "b": jnp.zeros((5,))}
    grads = {"a": jnp.full((3, 4), 2.0), "b": jnp.zeros((5,))}
    grads["a"] = grads["a"] * (10.0 / optax.tree.norm(grads))  # global norm exactly 10
    cfg = OptimizerConfig(b1=0.0, weight_decay=0.0, grad_clip=clip)
    tx = make_optimizer(cfg, constant(1e-3))
    _, state = tx.update(grads, tx.init(params), params)
    # With b1 = 0 Adam's first moment is exactly the (clipped) gradient it received.
    mu = optax.tree_utils.tree_get(state, "mu")
    assert float(optax.tree.norm(mu)) == pytest.approx(expected_norm, rel=1e-5)


def test_count_params() -> None:
    assert count_params(nested_params()) == 40 + 12 + 48 + 96 + 24 + 12 + 4 + 40 + 10 + 1
    assert count_params(jax.eval_shape(nested_params)) == count_params(nested_params())
    assert count_params(nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)) == 40 + 4 + 16 + 4
