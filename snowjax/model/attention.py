"""Rotary position embeddings and masked multi-head attention over packed rows.

Shapes: B batch, T query length, S key length, H query heads, K key/value heads,
G = H // K heads per group, D head dim. Packed rows carry ``segment_ids``
(1-based per document, 0 for padding); a query attends to a key only if both
are in the same segment and the key is not in its future.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_frequencies(head_dim: int, theta: float) -> jax.Array:
    """Inverse frequencies, shape (D/2,), as in Llama (``theta ** (-2i/D)``)."""
    return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate ``x`` (B, T, N, D) by ``positions`` (B, T), rotate-half convention.

    The rotate-half layout (first half of D paired with second half) is the one
    Hugging Face's Llama uses, so exported weights need no permutation.
    """
    inv_freq = rope_frequencies(x.shape[-1], theta)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, D/2)
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, q_offset: int | jax.Array = 0) -> jax.Array:
    """Boolean mask (B, T, S): causal within a row and same segment only.

    ``q_offset`` is the index of the first query inside the key row (nonzero when
    decoding with a cache).
    """
    t = q_segment_ids.shape[1]
    s = kv_segment_ids.shape[1]
    q_idx = jnp.arange(t)[:, None] + q_offset
    k_idx = jnp.arange(s)[None, :]
    causal = k_idx <= q_idx  # (T, S)
    same_doc = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]  # (B, T, S)
    return causal[None] & same_doc


def dot_product_attention_xla(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention with einsums. q (B,T,H,D), k/v (B,S,K,D), mask (B,T,S).

    Scores and softmax run in float32; the output has q's dtype, shape (B,T,H,D).
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (d**-0.5)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def multi_head_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, implementation: str = "xla"
) -> jax.Array:
    """Dispatch to an attention implementation; all give the same result.

    ``xla``: the einsum path above (any backend, any mask).
    ``dot_product`` / ``cudnn``: ``jax.nn.dot_product_attention`` with the XLA or the
    fused cuDNN kernel (NVIDIA GPUs, bf16/fp16 inputs).
    """
    if implementation == "xla":
        return dot_product_attention_xla(q, k, v, mask)
    impl = None if implementation == "dot_product" else "cudnn"
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=impl)
