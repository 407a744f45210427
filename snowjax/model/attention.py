"""Rotary position embeddings and masked multi-head attention over packed rows.

Shapes: B batch, T query length, S key length, H query heads, K key/value heads,
G = H // K heads per group, D head dim. Packed rows carry ``segment_ids``
(1-based per document, 0 for padding); a query attends to a key only if both
are in the same segment and the key is not in its future.
"""

from __future__ import annotations

import logging

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


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention of q (B,T,H,D) over k/v (B,S,H,D) with mask (B,T,S); scores in float32."""
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (q.shape[-1] ** -0.5)
    scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


def dot_product_attention_xla(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal_block: int = 0
) -> jax.Array:
    """Grouped-query attention with einsums. q (B,T,H,D), k/v (B,S,K,D), mask (B,T,S).

    Scores and softmax run in float32; the output has q's dtype, shape (B,T,H,D).
    Key/value heads are repeated to the H query heads, so every einsum is a plain
    4-D batched matmul over (B, H): XLA:CPU runs the 5-D grouped form
    (B,T,K,G,D) about 2x slower, even with G = 1.

    ``causal_block`` > 0 promises a causal mask over a row of the same length (T == S,
    no key after its query): queries then run in blocks of that many rows, each over the
    keys up to its block's end only, skipping the fully masked upper blocks (about half the
    score work for long rows). The result is the same.
    """
    groups = q.shape[2] // k.shape[2]
    if groups > 1:
        k = jnp.repeat(k, groups, axis=2)
        v = jnp.repeat(v, groups, axis=2)
    t = q.shape[1]
    if causal_block <= 0 or t <= causal_block or k.shape[1] != t:
        return _attend(q, k, v, mask)
    blocks = []
    for start in range(0, t, causal_block):
        end = min(start + causal_block, t)
        blocks.append(_attend(q[:, start:end], k[:, :end], v[:, :end], mask[:, start:end, :end]))
    return jnp.concatenate(blocks, axis=1)


# Packed rows hold at most this many documents for the cuDNN kernel's packed layout; a
# batch with a row of more falls back (inside the step, per batch) to a dense mask.
CUDNN_MAX_SEGMENTS = 64

_warned_fallback = False


def packed_segments(segment_ids: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Documents of packed rows as cuDNN's packed layout wants them.

    ``segment_ids`` (B, T): runs of equal non-zero ids are documents, 0 is padding.
    Returns ``lengths`` (B, M) int32 (-1 past a row's last document), ``offsets``
    (B, M + 1) int32, each document's first position (-1 after the last), and the
    largest number of documents in a row (scalar int32; more than M means the layout
    cannot hold the batch).
    """
    seg = segment_ids
    prev = jnp.pad(seg[:, :-1], ((0, 0), (1, 0)))
    nxt = jnp.pad(seg[:, 1:], ((0, 0), (0, 1)))
    starts = (seg != 0) & (seg != prev)
    ends = (seg != 0) & (seg != nxt)

    def first_m(flags: jax.Array) -> jax.Array:
        return jnp.nonzero(flags, size=max_segments + 1, fill_value=-1)[0].astype(jnp.int32)

    start_idx = jax.vmap(first_m)(starts)  # (B, M + 1)
    end_idx = jax.vmap(first_m)(ends)
    valid = start_idx[:, :max_segments] >= 0
    lengths = jnp.where(valid, end_idx[:, :max_segments] - start_idx[:, :max_segments] + 1, -1)
    offsets = start_idx.at[:, max_segments].set(-1)
    return lengths, offsets, jnp.max(jnp.sum(starts, axis=1)).astype(jnp.int32)


def _cudnn_packed(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """cuDNN flash attention over packed rows: each document attends causally to itself only.

    Uses the packed ("ragged") layout of ``jax._src.cudnn``'s fused attention (per-row
    document offsets and lengths, causal within each document), so no (T, T) mask exists.
    Rows with more than :data:`CUDNN_MAX_SEGMENTS` documents take the dense-mask path of
    ``jax.nn.dot_product_attention(implementation="cudnn")`` instead (chosen per batch).
    """
    from jax._src.cudnn.fused_attention_stablehlo import MaskType
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_attention

    lengths, offsets, most = packed_segments(segment_ids, CUDNN_MAX_SEGMENTS)
    scale = q.shape[-1] ** -0.5

    def packed(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        return cudnn_attention(
            q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
            scale=scale, mask_type=MaskType.CAUSAL,
        )  # fmt: skip

    def dense(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        return jax.nn.dot_product_attention(
            q, k, v, mask=same[:, None], scale=scale, is_causal=True, implementation="cudnn"
        )

    out = jax.lax.cond(most <= CUDNN_MAX_SEGMENTS, packed, dense, q, k, v)
    # Padding positions belong to no document: the kernel leaves them undefined; zero them
    # (their loss is masked, and a NaN there would still poison the sum).
    return jnp.where((segment_ids != 0)[:, :, None, None], out, jnp.zeros((), out.dtype))


def multi_head_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    implementation: str = "xla",
    causal_block: int = 0,
    segment_ids: jax.Array | None = None,
) -> jax.Array:
    """Dispatch to an attention implementation; all give the same result.

    ``xla``: the einsum path above (any backend, any mask).
    ``dot_product``: ``jax.nn.dot_product_attention``'s XLA path with the mask.
    ``cudnn``: the fused cuDNN flash kernel (NVIDIA GPUs, bf16/fp16). With ``segment_ids``
    (B, T) of packed rows and a causal ``mask`` it runs the segment-aware packed layout
    (:func:`_cudnn_packed`); otherwise it passes the dense mask. On other backends it logs
    a warning once and runs the ``xla`` path.
    """
    global _warned_fallback
    if implementation == "cudnn" and jax.default_backend() != "gpu":
        if not _warned_fallback:
            logging.getLogger(__name__).warning(
                "model.attention=cudnn needs an NVIDIA GPU; the %s backend runs the xla attention instead",
                jax.default_backend(),
            )
            _warned_fallback = True
        implementation = "xla"
    if implementation == "xla":
        return dot_product_attention_xla(q, k, v, mask, causal_block)
    if implementation == "cudnn" and segment_ids is not None:
        return _cudnn_packed(q, k, v, segment_ids)
    impl = None if implementation == "dot_product" else "cudnn"
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=impl)
