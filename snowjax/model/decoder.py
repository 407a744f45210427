"""A Llama-2 style decoder in Flax NNX: the whole model in one file.

token ids (B, T)
  -> embedding (V, E)
  -> L x [ x + Attention(RMSNorm(x)) ; x + SwiGLU(RMSNorm(x)) ]   (scanned over L, or unrolled)
  -> RMSNorm -> logits (B, T, V) via the tied embedding or a separate head

Parameters are stored in ``model.param_dtype`` and cast to ``model.dtype`` for
compute. Every parameter carries logical axis names (``nnx.with_partitioning``),
and key activations are constrained by name; ``snowjax.parallel`` maps names to
mesh axes. Attention sees ``segment_ids`` and ``positions`` of packed rows, so
documents never attend to each other and RoPE restarts at each document.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from snowjax.config import ModelConfig
from snowjax.model.attention import apply_rope, attention_mask, multi_head_attention
from snowjax.parallel import constrain

_REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x`` (B, T, *in) times ``w`` (*in, *out) -> (B, T, *out) as one 2-D matmul."""
    b, t = x.shape[:2]
    k = math.prod(x.shape[2:])
    y = jnp.dot(x.reshape(b * t, k), w.reshape(k, -1))
    return y.reshape(b, t, *w.shape[x.ndim - 2 :])


@jax.custom_vjp
def _matmul_cpu(x: jax.Array, w: jax.Array) -> jax.Array:
    return _matmul(x, w)


def _matmul_cpu_fwd(x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _matmul(x, w), (x, w)


def _matmul_cpu_bwd(res: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    m, k = x.shape[0] * x.shape[1], math.prod(x.shape[2:])
    x2, w2, dy2 = x.reshape(m, k), w.reshape(k, -1), dy.reshape(m, -1)
    dx = jax.lax.dot_general(dy2, w2, (((1,), (1,)), ((), ())))
    # dw = x^T dy, contracting the token axis of both: XLA:CPU then transposes x (E wide).
    # Autodiff would emit (dy^T x)^T, transposing the (often 4-8x wider) dy instead.
    dw = jax.lax.dot_general(x2, dy2, (((0,), (0,)), ((), ())))
    return dx.reshape(x.shape).astype(x.dtype), dw.reshape(w.shape).astype(w.dtype)


_matmul_cpu.defvjp(_matmul_cpu_fwd, _matmul_cpu_bwd)


def dense(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """``jnp.einsum(spec, x, w)`` for a projection: x (B, T, *in), w (*in, *out) -> (B, T, *out).

    On CPU the backward is hand-written so the weight gradient's transposed copy is of the
    narrow input, not of the wide output gradient (~7% faster 134m layers on XLA:CPU).
    Elsewhere the einsum and its autodiff: accelerator GEMMs transpose operands for free,
    sharded dimensions stay separate, and remat policies such as ``dots`` see the matmul.
    """
    if jax.default_backend() == "cpu":
        return _matmul_cpu(x, w)
    return jnp.einsum(spec, x, w)


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], names: tuple[str, ...], cfg: ModelConfig, std: float) -> nnx.Param:
    value = nnx.initializers.normal(std)(rngs.params(), shape, jnp.dtype(cfg.param_dtype))
    # Names only: placement happens in the jitted init's out_shardings (parallel.py).
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


class RMSNorm(nnx.Module):
    def __init__(self, cfg: ModelConfig):
        self.eps = cfg.norm_eps
        self.scale = nnx.Param(
            jnp.ones((cfg.hidden_size,), cfg.param_dtype), out_sharding=("norm",), eager_sharding=False
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        self.q = _param(rngs, (e, h, d), ("embed", "heads", "head_dim"), cfg, cfg.init_std)
        self.k = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), cfg, cfg.init_std)
        self.v = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), cfg, cfg.init_std)
        # Output projection scaled down with depth (GPT-2 style) for stable early training.
        out_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
        self.o = _param(rngs, (h, d, e), ("heads", "head_dim", "embed"), cfg, out_std)

    def qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Projected, rotated q (B,T,H,D) and k, v (B,T,K,D)."""
        dt = self.cfg.dtype
        b, t = x.shape[:2]
        e, h, kv, d = self.q.shape[0], self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.resolved_head_dim
        g = h // kv
        # One matmul for q, k and v (fewer, larger dots; one pass over x; one dx matmul in the
        # backward). The weights are grouped per kv head, (E, K, G+2, D), so a tensor-sharded
        # kv-heads axis stays sharded: nothing is concatenated across shards.
        w = jnp.concatenate(
            [self.q[...].reshape(e, kv, g, d), self.k[...][:, :, None], self.v[...][:, :, None]], axis=2
        ).astype(dt)
        qkv = dense("bte,ekgd->btkgd", x, w)
        q = qkv[:, :, :, :g].reshape(b, t, h, d)
        k, v = qkv[:, :, :, g], qkv[:, :, :, g + 1]
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        theta = self.cfg.rope_theta
        return apply_rope(q, positions, theta), apply_rope(k, positions, theta), v

    def project_out(self, attn: jax.Array) -> jax.Array:
        attn = checkpoint_name(attn, "attention_out")
        out = dense("bthd,hde->bte", attn, self.o[...].astype(self.cfg.dtype))
        return constrain(out, ("batch", "length", "act_embed"))

    def __call__(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
        q, k, v = self.qkv(x, positions)
        mask = attention_mask(segment_ids, segment_ids)
        # The mask is causal within this row, so the xla path may skip fully masked key blocks.
        attn = multi_head_attention(
            q, k, v, mask, self.cfg.attention, causal_block=self.cfg.attention_block, segment_ids=segment_ids
        )
        return self.project_out(attn)


class MLP(nnx.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        e, f = cfg.hidden_size, cfg.ffn_size
        self.gate = _param(rngs, (e, f), ("embed", "mlp"), cfg, cfg.init_std)
        self.up = _param(rngs, (e, f), ("embed", "mlp"), cfg, cfg.init_std)
        self.down = _param(rngs, (f, e), ("mlp", "embed"), cfg, cfg.init_std / (2 * cfg.num_layers) ** 0.5)

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self.cfg.dtype
        # gate and up as one (E, 2, F) matmul: one pass over x, one dx matmul in the backward,
        # and the tensor-sharded F axis stays whole.
        w = jnp.stack([self.gate[...], self.up[...]], axis=1).astype(dt)
        gate_up = dense("bte,ecf->btcf", x, w)
        gate, up = gate_up[:, :, 0], gate_up[:, :, 1]
        h = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return constrain(dense("btf,fe->bte", h, self.down[...].astype(dt)), ("batch", "length", "act_embed"))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x), segment_ids, positions)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg, cfg.init_std)
        if cfg.scan_layers:
            # One Block whose parameters have a leading "layers" axis, run by nnx.scan.
            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_blocks(rngs: nnx.Rngs) -> Block:
                return Block(cfg, rngs)

            self.layers = make_blocks(rngs)
        else:
            self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg, cfg.init_std)

    def _block_fn(self):
        def run(block: Block, x: jax.Array, segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
            return block(x, segment_ids, positions)

        if self.cfg.remat == "none":
            return run
        policy = _REMAT_POLICIES.get(self.cfg.remat)  # None for "full": save nothing
        return nnx.remat(run, policy=policy)

    def hidden_states(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
        """Final normalised hidden states (B, T, E) in the compute dtype."""
        # Gather from a fully gathered table (what FSDP does with any weight): a
        # gather over a sharded table makes XLA replicate its result instead.
        table = constrain(self.embed[...].astype(self.cfg.dtype), (None, None))
        x = jnp.take(table, tokens, axis=0)
        x = constrain(x, ("batch", "length", "act_embed"))
        block_fn = self._block_fn()
        if self.cfg.scan_layers:

            @nnx.scan(
                in_axes=(0, nnx.Carry, None, None),
                out_axes=nnx.Carry,
                transform_metadata={nnx.PARTITION_NAME: "layers"},
            )
            def scan_blocks(block: Block, x: jax.Array, segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
                return block_fn(block, x, segment_ids, positions)

            x = scan_blocks(self.layers, x, segment_ids, positions)
        else:
            for block in self.layers:
                x = block_fn(block, x, segment_ids, positions)
        return self.final_norm(x)

    def logits(self, h: jax.Array) -> jax.Array:
        """Project hidden states (B, T, E) to logits (B, T, V) in float32."""
        dt = self.cfg.dtype
        if self.cfg.tie_embeddings:
            out = jnp.einsum("bte,ve->btv", h, self.embed[...].astype(dt), preferred_element_type=jnp.float32)
        else:
            out = jnp.einsum("bte,ev->btv", h, self.lm_head[...].astype(dt), preferred_element_type=jnp.float32)
        return constrain(out, ("batch", "length", "vocab"))

    def __call__(
        self, tokens: jax.Array, segment_ids: jax.Array | None = None, positions: jax.Array | None = None
    ) -> jax.Array:
        """Logits (B, T, V) float32 for token ids (B, T); unpacked rows need no ids/positions."""
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        return self.logits(self.hidden_states(tokens, segment_ids, positions))


def count_params(cfg: ModelConfig) -> int:
    """Exact parameter count of the decoder for ``cfg`` (embedding counted once if tied)."""
    e, f, v = cfg.hidden_size, cfg.ffn_size, cfg.vocab_size
    h, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    per_layer = e * h * d * 2 + e * k * d * 2 + 3 * e * f + 2 * e
    head = 0 if cfg.tie_embeddings else e * v
    return v * e + cfg.num_layers * per_layer + e + head
