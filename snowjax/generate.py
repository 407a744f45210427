"""Batched autoregressive decoding with a KV cache for the NNX decoder.

Prompts of different lengths are left-padded to one length ``P`` (rounded up to a
bucket so few shapes compile), so every row's next token sits in the same cache slot
and one decode step serves the whole batch. Per row, ``pad`` leading slots are
empty: their keys are masked out and positions count from the first real token, so a
padded row computes exactly what it would alone.

Two jit-compiled functions do the work:

- ``prefill``: runs the prompts (B, P) through every layer, writes their rotated keys
  and values into a cache (B, K, S, D) per layer with ``S = P + max_new_tokens`` (bucketed),
  and returns the first sampled token;
- ``decode``: up to ``chunk`` steps in one ``lax.while_loop`` (one dispatch): each feeds
  every row's last token, writes its keys/values into slot ``t`` of the (donated, updated
  in place) cache, attends over slots ``[pad, t]`` and samples the next token (greedy, or
  temperature with nucleus/top-p filtering). The loop ends early once every row has
  produced EOS.

Generation stops per row at EOS (``<|endoftext|>``), ``max_new_tokens``, or a stop
sequence (text: checked on the host between decode chunks of ``check_stop_every`` steps
and cut exactly afterwards; without stop sequences all steps run in one dispatch). Under
a mesh, the batch and the cache shard over the data axes and the heads over ``tensor``
(logical names, as in training).

The layers here compute what :class:`~snowjax.model.decoder.Block` computes, written for
inference: q/k/v and gate/up are separate projections (the training modules concatenate
those weights into one array on every call, a copy of most of the model per decode step
that costs more than the step's matmuls on CPU), each layer writes its keys/values into
its cache arrays in place, and a single new token attends over the cache in its stored
(B, K, S, D) layout with two batched matmuls over (B, K). Each layer has its own cache
arrays (unless layers are scanned: then (L, B, K, S, D) stacks): XLA:CPU copies a slice of
a stacked array before a matmul reads it, which made the decode attention ~8x slower.
On one CPU device, decoding reads the weights in a layout made for it once per ``Generator``
(:func:`inference_weights`): fused q/k/v and gate/up projections and an (E, V) output head,
in float32 packed for snowjax's thin-matmul kernel (:mod:`snowjax.kernels`), which reads each
weight once per step whatever the batch; there a new token also attends through snowjax's
decode-attention kernel, over its row's filled cache slots only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from snowjax.config import ModelConfig
from snowjax.data.tokenizer import EOS_ID, PAD_ID
from snowjax.kernels import TILE, cpu_kernels_available, decode_attention, pack_columns, thin_matmul
from snowjax.model.attention import apply_rope, multi_head_attention, rope_frequencies
from snowjax.model.decoder import MLP, Attention, Block, Decoder, dense
from snowjax.parallel import constrain

LAYER_CACHE_AXES = ("batch", "kv_heads", "cache_length", "head_dim")
CACHE_AXES = ("layers", *LAYER_CACHE_AXES)

# XLA:CPU options of the decode loop only. A decode step multiplies a few rows (the batch) by
# every weight; YNNPACK's dots ran those thin matmuls ~25% faster than XLA's default Eigen dots
# at batch 8 (about the same at batch 1) on an AMD EPYC (Zen 4) host. snowjax turns
# YNNPACK fusions off process-wide for training's large matmuls (snowjax/__init__.py); see
# benchmarks/generate.py for the measurements.
_DECODE_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token. ``temperature`` 0 is greedy (argmax)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    stop_sequences: tuple[str, ...] = ()
    seed: int = 0
    # Decode steps per dispatch when there are stop sequences (checked on the host in between);
    # without them every step runs in one dispatch. EOS is checked on the device after every step.
    check_stop_every: int = 8


@dataclasses.dataclass
class Generation:
    """One row's result: generated ids (without the prompt) and why it stopped."""

    tokens: list[int]
    finish_reason: str  # "eos", "length" or "stop"
    text: str | None = None


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, math.ceil(n / multiple) * multiple)


def left_pad(prompts: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts as an int32 (B, length) array padded on the left, and each row's pad count."""
    tokens = np.full((len(prompts), length), PAD_ID, np.int32)
    pads = np.zeros(len(prompts), np.int32)
    for i, p in enumerate(prompts):
        if not 0 < len(p) <= length:
            raise ValueError(f"prompt {i} has {len(p)} tokens; it needs 1 to {length}")
        tokens[i, length - len(p) :] = p
        pads[i] = length - len(p)
    return tokens, pads


def _qkv(
    attn: Attention, x: jax.Array, positions: jax.Array, rotation: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``Attention.qkv`` with three projections: rotated q (B,T,H,D) and k, v (B,T,K,D).

    ``Attention.qkv`` concatenates the q, k and v weights into one (E, K, G+2, D) array on
    every call (good for training's one backward matmul); here that would be a copy of
    those weights per decode step. Separate matmuls read the same weights once. With a
    ``rotation`` (one new token, see :func:`_rope_rotation`), RoPE is that matmul.
    """
    dt = attn.cfg.dtype
    q = dense("bte,ehd->bthd", x, attn.q[...].astype(dt))
    k = dense("bte,ekd->btkd", x, attn.k[...].astype(dt))
    v = dense("bte,ekd->btkd", x, attn.v[...].astype(dt))
    q = constrain(q, ("batch", "length", "heads", "head_dim"))
    k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
    v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
    if rotation is not None:
        return _rotate(q, rotation), _rotate(k, rotation), v
    theta = attn.cfg.rope_theta
    return apply_rope(q, positions, theta), apply_rope(k, positions, theta), v


def _mlp(mlp: MLP, x: jax.Array) -> jax.Array:
    """``MLP.__call__`` with separate gate and up matmuls (no per-call stacked copy of the two weights)."""
    dt = mlp.cfg.dtype
    gate = dense("bte,ef->btf", x, mlp.gate[...].astype(dt))
    up = dense("bte,ef->btf", x, mlp.up[...].astype(dt))
    h = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
    return constrain(dense("btf,fe->bte", h, mlp.down[...].astype(dt)), ("batch", "length", "act_embed"))


def _rope_rotation(positions: jax.Array, head_dim: int, theta: float) -> jax.Array:
    """RoPE of one new token per row as a matrix: (B, D, D) with ``apply_rope(x) == x @ rotation``.

    Decoding rotates q and k with it as a matmul, computed once per step for all layers. As
    elementwise code (``apply_rope``), XLA fuses the rotation of q into the (B, S, K, G, D)
    score product of :func:`_decode_attention` and recomputes its sines and cosines for every
    cache slot (about 4x slower attention on CPU); a matmul's result is materialised once.
    """
    half = head_dim // 2
    angles = positions[:, 0].astype(jnp.float32)[:, None] * rope_frequencies(head_dim, theta)  # (B, D/2)
    eye = jnp.eye(half, dtype=jnp.float32)
    cos, sin = jnp.cos(angles)[:, :, None] * eye, jnp.sin(angles)[:, :, None] * eye  # (B, D/2, D/2), diagonal
    # rotate-half: out[:half] = x1 cos - x2 sin, out[half:] = x2 cos + x1 sin (x1 = x[:half], x2 = x[half:])
    return jnp.concatenate([jnp.concatenate([cos, sin], 2), jnp.concatenate([-sin, cos], 2)], 1)


def _rotate(x: jax.Array, rotation: jax.Array) -> jax.Array:
    """x (B, 1, N, D) rotated by each row's (D, D) ``rotation``, in float32 as ``apply_rope`` computes."""
    return jnp.einsum("bthi,bij->bthj", x.astype(jnp.float32), rotation).astype(x.dtype)


# Decode attention on CPU at up to this many (row, query head) pairs: as multiply-reduce loops
# rather than batched matmuls (see _decode_attention).
_CPU_REDUCE_ATTENTION_MAX_ROW_HEADS = 48


def _decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """One new token's attention: rotated q (B,1,H,D) over one layer's cache k/v (B,K,S,D), mask (B,1,S).

    Two batched matmuls over (B, K) with the query heads of a group as rows, on the cache as
    it is stored (no transposed copy). On CPU with few rows (B x H up to 48) the same two
    products run as elementwise-multiply-and-sum loops instead: XLA:CPU spends more on
    dispatching B x K tiny matmuls than on reading the cache (measured on the 134m config:
    22.5 ms instead of 27.5 ms per batch-1 step; at batch 4 the two are even, at batch 8 the
    matmuls win, 46 ms against 57). Scores and softmax in float32, as in training's
    ``dot_product_attention_xla``.
    """
    b, _, h, d = q.shape
    kv = k.shape[1]
    qg = q.reshape(b, kv, h // kv, d)  # query heads grouped per kv head: head = kv_head * G + g
    reduce = jax.default_backend() == "cpu" and b * h <= _CPU_REDUCE_ATTENTION_MAX_ROW_HEADS
    if reduce:
        products = qg.astype(jnp.float32)[:, :, :, None, :] * k.astype(jnp.float32)[:, :, None, :, :]
        scores = jnp.sum(products, axis=-1)  # (B, K, G, S)
    else:
        scores = jnp.einsum("bkgd,bksd->bkgs", qg, k, preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, :, None, :], scores * (d**-0.5), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    if reduce:
        out = jnp.sum(probs[..., None] * v[:, :, None], axis=3)  # (B, K, G, D)
    else:
        out = jnp.einsum("bkgs,bksd->bkgd", probs, v)
    return out.reshape(b, 1, h, d).astype(q.dtype)


def _attention_kernel_applies(q: jax.Array, k: jax.Array) -> bool:
    """Whether a decode step's attention runs in snowjax's CPU kernel (float32, kernels built)."""
    return q.dtype == jnp.float32 and k.dtype == jnp.float32 and cpu_kernels_available()


Cache = tuple[Any, Any]
"""Keys and values: per layer, a tuple of L arrays (B, K, S, D) each (unrolled layers), or
stacked (L, B, K, S, D) arrays (scanned layers)."""


InferenceWeights = dict[str, Any]
"""``{"head": (E, V), "layers": ({"qkv": (E, N), "o": (H*D, E), "gate_up": (E, 2F), "down": (F, E)}, ...)}``
with ``N = (H + 2K) D``: every projection as one (in, out) matrix, or that matrix packed in column tiles
(out / TILE, in, TILE) for :func:`~snowjax.kernels.thin_matmul` (see :func:`inference_weights`)."""


def init_cache(cfg: ModelConfig, batch: int, length: int) -> Cache:
    """An empty cache of ``length`` slots for ``batch`` rows, in the layout ``cfg.scan_layers`` asks for."""
    shape = (batch, cfg.num_kv_heads, length, cfg.resolved_head_dim)
    if cfg.scan_layers:
        stacked = jnp.zeros((cfg.num_layers, *shape), cfg.dtype)
        return constrain(stacked, CACHE_AXES), constrain(jnp.zeros_like(stacked), CACHE_AXES)
    ks = tuple(constrain(jnp.zeros(shape, cfg.dtype), LAYER_CACHE_AXES) for _ in range(cfg.num_layers))
    vs = tuple(constrain(jnp.zeros(shape, cfg.dtype), LAYER_CACHE_AXES) for _ in range(cfg.num_layers))
    return ks, vs


def _layer_step(
    block: Block,
    x: jax.Array,
    cache: tuple[jax.Array, jax.Array],
    layer: jax.Array | None,
    positions: jax.Array,
    mask: jax.Array,
    index: jax.Array,
    attention: str,
    rotation: jax.Array | None,
    weights: dict[str, jax.Array] | None = None,
    pads: jax.Array | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One layer over new tokens x (B, T, E): write their k/v into the cache at slot ``index`` (in
    place), attend over the layer's cache, and return x and the updated cache.

    ``cache`` is this layer's (B, K, S, D) keys and values (``layer`` None), or the stacked
    (L, B, K, S, D) arrays and ``layer`` the index into them (scanned layers). ``weights``: the
    layer's projections from :func:`inference_weights`, used instead of the block's own; with
    them, in float32 where snowjax's CPU kernels build, a new token attends through
    :func:`~snowjax.kernels.decode_attention` over its row's filled slots (``pads`` (B,) to ``index``).
    """
    if weights is None:
        q, k, v = _qkv(block.attn, block.attn_norm(x), positions, rotation)
    else:
        q, k, v = _qkv_prepared(block.attn.cfg, weights["qkv"], block.attn_norm(x), positions, rotation)
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # (B, K, T, D): the cache's layout
    if layer is None:
        start, axes = (0, 0, index, 0), LAYER_CACHE_AXES
    else:
        start, axes, k, v = (layer, 0, 0, index, 0), CACHE_AXES, k[None], v[None]
    cache_k = constrain(jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start), axes)
    cache_v = constrain(jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start), axes)
    if layer is None:
        layer_k, layer_v = cache_k, cache_v
    else:
        layer_k = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False)
        layer_v = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False)
    if q.shape[1] == 1 and weights is not None and pads is not None and _attention_kernel_applies(q, layer_k):
        attn = decode_attention(q[:, 0], layer_k, layer_v, pads, index)[:, None]
    elif q.shape[1] == 1:
        attn = _decode_attention(q, layer_k, layer_v, mask)
    else:  # the prompt: training's attention, on (B, S, K, D) views of the cache
        k_bskd, v_bskd = jnp.swapaxes(layer_k, 1, 2), jnp.swapaxes(layer_v, 1, 2)
        attn = multi_head_attention(q, k_bskd, v_bskd, mask, "xla" if attention == "cudnn" else attention)
    if weights is None:
        x = x + block.attn.project_out(attn)
        return x + _mlp(block.mlp, block.mlp_norm(x)), (cache_k, cache_v)
    x = x + _linear(attn.reshape(*attn.shape[:2], -1), weights["o"])
    gate, up = jnp.split(_linear(block.mlp_norm(x), weights["gate_up"]), 2, axis=-1)
    return x + _linear(jax.nn.silu(gate) * up, weights["down"]), (cache_k, cache_v)


def _forward_with_cache(
    model: Decoder,
    tokens: jax.Array,
    cache: Cache,
    pads: jax.Array,
    index: jax.Array,
    weights: InferenceWeights | None = None,
) -> tuple[jax.Array, Cache]:
    """Logits of the last new token (B, V) after running ``tokens`` (B, T) from cache slot ``index``.

    ``weights``: the projections and output head of :func:`inference_weights`, used instead of the model's own.
    """
    cfg = model.cfg
    b, t = tokens.shape
    s = cache[0].shape[3] if cfg.scan_layers else cache[0][0].shape[2]
    slots = index + jnp.arange(t)  # cache slots of the new tokens
    positions = slots[None, :] - pads[:, None]  # position 0 = the row's first real token
    k_slot = jnp.arange(s)
    # A new token sees the row's real keys up to and including itself.
    mask = (k_slot[None, None, :] <= slots[None, :, None]) & (k_slot[None, None, :] >= pads[:, None, None])
    mask = jnp.broadcast_to(mask, (b, t, s))
    table = constrain(model.embed[...].astype(cfg.dtype), (None, None))
    x = constrain(jnp.take(table, tokens, axis=0), ("batch", "length", "act_embed"))
    rotation = _rope_rotation(positions, cfg.resolved_head_dim, cfg.rope_theta) if t == 1 else None
    step = functools.partial(
        _layer_step, positions=positions, mask=mask, index=index, attention=cfg.attention, rotation=rotation, pads=pads
    )
    if cfg.scan_layers:
        cache = (constrain(cache[0], CACHE_AXES), constrain(cache[1], CACHE_AXES))

        @nnx.scan(
            in_axes=(0, nnx.Carry, 0),
            out_axes=nnx.Carry,
            transform_metadata={nnx.PARTITION_NAME: "layers"},
        )
        def run(
            block: Block, carry: tuple[jax.Array, tuple[jax.Array, jax.Array]], layer: jax.Array
        ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
            return step(block, carry[0], carry[1], layer)

        x, cache = run(model.layers, (x, cache), jnp.arange(cfg.num_layers))
    else:
        # One array per layer: a matmul over a slice of a stacked cache would copy that slice first.
        ks, vs = list(cache[0]), list(cache[1])
        for i, block in enumerate(model.layers):
            layer_weights = None if weights is None else weights["layers"][i]
            x, (ks[i], vs[i]) = step(block, x, (ks[i], vs[i]), None, weights=layer_weights)
        cache = (tuple(ks), tuple(vs))
    h = model.final_norm(x[:, -1:])
    if weights is None:
        return model.logits(h)[:, 0], cache
    logits = _linear(h[:, 0], weights["head"], preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", "vocab")), cache


def inference_weights(cfg: ModelConfig, params: Any, mesh: jax.sharding.Mesh | None = None) -> InferenceWeights | None:
    """On one CPU device, the decoder's projections re-laid out once for decoding; else None.

    Each layer's q, k, v become one (E, N) matrix and gate, up one (E, 2F), so a decode step
    runs four matmuls per layer where the training layout needs seven (a fixed cost per thin
    matmul, and two threads share a wide one better); the output head is an (E, V) copy of the
    tied embedding (or ``lm_head`` itself). In float32, where snowjax's CPU kernel builds
    (:mod:`snowjax.kernels`), every matrix is packed into the column tiles of
    :func:`~snowjax.kernels.thin_matmul`, which reads each weight once per step whatever the
    batch; otherwise it is stored (in, out) for XLA's dots. Measured on the 134m config (fp32,
    2-core AMD EPYC): the twelve layers' matmuls and the head take ~16 ms per step at batch 1-8
    with the kernel; with XLA's (YNNPACK) dots 31 ms at batch 8 in the (in, out) layout (38 ms
    stored (out, in)) and 16-18 ms at batch 1 (benchmarks/generate.py).

    The copy costs one model's parameters of memory more, in the compute dtype, so only on CPU
    and without a multi-device mesh (whose tensor axis shards heads of the training layout);
    scanned layers (``scan_layers``) keep the training layout too.
    """
    if jax.default_backend() != "cpu" or cfg.scan_layers or (mesh is not None and mesh.size > 1):
        return None
    h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    dt = cfg.dtype
    packed = jnp.dtype(dt) == jnp.float32 and cpu_kernels_available()

    def lay_out(w: jax.Array) -> jax.Array:  # (in, out): column tiles for the kernel where it applies
        w = w.astype(dt)
        return pack_columns(w) if packed and w.shape[1] % TILE == 0 else w

    @jax.jit
    def prepare(params: Any) -> InferenceWeights:
        layers = []
        for i in range(cfg.num_layers):
            layer = params["layers"][i]
            attn, mlp = layer["attn"], layer["mlp"]
            e = attn["q"][...].shape[0]
            q = attn["q"][...].reshape(e, h * d)
            k, v = attn["k"][...].reshape(e, kv * d), attn["v"][...].reshape(e, kv * d)
            layers.append(
                {
                    "qkv": lay_out(jnp.concatenate([q, k, v], axis=1)),
                    "o": lay_out(attn["o"][...].reshape(h * d, e)),
                    "gate_up": lay_out(jnp.concatenate([mlp["gate"][...], mlp["up"][...]], axis=1)),
                    "down": lay_out(mlp["down"][...]),
                }
            )
        head = params["embed"][...].T if cfg.tie_embeddings else params["lm_head"][...]
        return {"head": lay_out(head), "layers": tuple(layers)}

    return prepare(params)


def _linear(x: jax.Array, w: jax.Array, preferred_element_type: Any = None) -> jax.Array:
    """x (..., in) times an (in, out) matrix w, or its (out / TILE, in, TILE) packing for the CPU kernel: (..., out)."""
    if w.ndim == 3:
        return thin_matmul(x, w)  # float32 in and out
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=preferred_element_type)


def _qkv_prepared(
    cfg: ModelConfig, w: jax.Array, x: jax.Array, positions: jax.Array, rotation: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`_qkv` with the fused (E, N) matrix (or its packing) of :func:`inference_weights`: one matmul."""
    b, t, _ = x.shape
    h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    qkv = _linear(x, w)
    q = qkv[..., : h * d].reshape(b, t, h, d)
    k = qkv[..., h * d : (h + kv) * d].reshape(b, t, kv, d)
    v = qkv[..., (h + kv) * d :].reshape(b, t, kv, d)
    if rotation is not None:
        return _rotate(q, rotation), _rotate(k, rotation), v
    return apply_rope(q, positions, cfg.rope_theta), apply_rope(k, positions, cfg.rope_theta), v


def sample_token(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """Next token per row from float32 logits (B, V): argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep tokens whose preceding cumulative probability is below top_p (the top one always)
        before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(before < top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


class Generator:
    """Jit-compiled prefill and decode over a decoder's parameters.

    Args:
      cfg: the model config.
      params: the decoder's parameter state (``nnx.State``), e.g. ``TrainState.params``.
      mesh: optional mesh; the batch and cache shard over its data axes.
      pad_multiple: prompt and cache lengths are rounded up to this (fewer compilations).
    """

    def __init__(self, cfg: ModelConfig, params: Any, mesh: jax.sharding.Mesh | None = None, pad_multiple: int = 64):
        from snowjax.train.state import model_graphdef

        self.cfg = cfg
        self.graphdef, _ = model_graphdef(cfg)
        self.params = params
        self.weights = inference_weights(cfg, params, mesh)
        self.mesh = mesh
        self.pad_multiple = pad_multiple
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("cache_len", "temperature", "top_p"))
        self._decode = jax.jit(
            self._decode_fn,
            static_argnames=("chunk", "temperature", "top_p"),
            donate_argnames=("cache",),
            compiler_options=_DECODE_CPU_OPTIONS if jax.default_backend() == "cpu" else None,
        )

    # ------------------------------------------------------------------ jitted bodies

    def _prefill_fn(
        self,
        params: Any,
        tokens: jax.Array,
        pads: jax.Array,
        key: jax.Array,
        *,
        cache_len: int,
        temperature: float,
        top_p: float,
    ) -> tuple[jax.Array, Cache]:
        model = nnx.merge(self.graphdef, params)
        cfg = self.cfg
        cache = init_cache(cfg, tokens.shape[0], cache_len)
        logits, cache = _forward_with_cache(model, tokens, cache, pads, jnp.int32(0))
        return sample_token(logits, key, temperature, top_p), cache

    def _decode_fn(
        self,
        params: Any,
        weights: InferenceWeights | None,
        token: jax.Array,
        cache: Cache,
        pads: jax.Array,
        index: jax.Array,
        key: jax.Array,
        done: jax.Array,
        num_steps: jax.Array,
        *,
        chunk: int,
        temperature: float,
        top_p: float,
    ) -> tuple[jax.Array, jax.Array, jax.Array, Cache, jax.Array, jax.Array]:
        """Up to ``num_steps`` (<= ``chunk``) decode steps in one while loop, from ``token`` (B,) at slot ``index``.

        Stops early once every row is ``done`` (has produced EOS). Returns the sampled tokens
        (B, chunk) (the first ``steps`` columns are valid), ``steps``, and the last token, cache,
        key and done flags to continue from. Keys are split once per step, as a step-by-step host
        loop would, so a seed gives the same samples whatever the chunking.
        """
        out = constrain(jnp.full((token.shape[0], chunk), PAD_ID, jnp.int32), ("batch", "length"))

        def unfinished(carry: tuple) -> jax.Array:
            i, done = carry[0], carry[4]
            return (i < num_steps) & ~jnp.all(done)

        def step(carry: tuple) -> tuple:
            i, token, cache, key, done, out = carry
            model = nnx.merge(self.graphdef, params, copy=True)  # new Variables at the loop body's trace level
            key, sub = jax.random.split(key)
            logits, cache = _forward_with_cache(model, token[:, None], cache, pads, index + i, weights)
            token = sample_token(logits, sub, temperature, top_p)
            out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
            return i + 1, token, cache, key, done | (token == EOS_ID), out

        carry = (jnp.int32(0), token, cache, key, done, out)
        steps, token, cache, key, done, out = jax.lax.while_loop(unfinished, step, carry)
        return out, steps, token, cache, key, done

    # ------------------------------------------------------------------ host loop

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig = SamplingConfig(),
        decode_text: Callable[[list[int]], str] | None = None,
    ) -> list[Generation]:
        """Generate for a batch of token-id prompts.

        ``decode_text`` (ids -> text) is needed for ``stop_sequences``; the returned
        generations then carry their text, cut before the first stop sequence.
        """
        if not prompts:
            return []
        if sampling.stop_sequences and decode_text is None:
            raise ValueError("stop_sequences need decode_text (a tokenizer) to be checked")
        if sampling.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
        if sampling.check_stop_every < 1:
            raise ValueError(f"check_stop_every must be >= 1, got {sampling.check_stop_every}")
        longest = max(len(p) for p in prompts)
        prompt_len = _bucket(longest, self.pad_multiple)
        cache_len = _bucket(prompt_len + sampling.max_new_tokens, self.pad_multiple)
        if prompt_len + sampling.max_new_tokens > self.cfg.max_seq_len:
            raise ValueError(
                f"prompt ({longest} tokens, padded to {prompt_len}) + max_new_tokens {sampling.max_new_tokens} is over "
                f"model.max_seq_len {self.cfg.max_seq_len}"
            )
        tokens, pads = left_pad(prompts, prompt_len)
        # Stop sequences need the text, so the host checks them between chunks of check_stop_every
        # steps; otherwise one chunk (bucketed, so nearby lengths share a compilation) does it all.
        every = sampling.check_stop_every
        chunk = every if sampling.stop_sequences else _bucket(sampling.max_new_tokens - 1, self.pad_multiple)
        key = jax.random.key(sampling.seed)
        ctx = jax.set_mesh(self.mesh) if self.mesh is not None else _nullcontext()
        with ctx:
            key, sub = jax.random.split(key)
            token, cache = self._prefill(
                self.params,
                jnp.asarray(tokens),
                jnp.asarray(pads),
                sub,
                cache_len=cache_len,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
            )
            pieces = [token[:, None]]  # device arrays and host arrays, concatenated on the host
            produced = 1
            done = token == EOS_ID
            pads_dev = jnp.asarray(pads)
            while produced < sampling.max_new_tokens:
                # with stop sequences, end the chunk where the old step-by-step loop checked (multiples of every)
                room = every - produced % every if sampling.stop_sequences else chunk
                n = min(room, sampling.max_new_tokens - produced)
                out, steps, token, cache, key, done = self._decode(
                    self.params,
                    self.weights,
                    token,
                    cache,
                    pads_dev,
                    jnp.int32(prompt_len + produced - 1),  # slot of the token fed first
                    key,
                    done,
                    jnp.int32(n),
                    chunk=chunk,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                )
                ran = int(steps)
                pieces.append(np.asarray(out)[:, :ran])
                produced += ran
                if ran < n:  # every row has produced EOS
                    break
                if sampling.stop_sequences and self._all_done(np.concatenate(pieces, axis=1), sampling, decode_text):
                    break
        generated = np.concatenate(pieces, axis=1)  # (B, n)
        return [self._finish(row.tolist(), sampling, decode_text) for row in generated]

    @staticmethod
    def _stop_at(text: str, stops: Sequence[str]) -> int | None:
        cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
        return min(cuts) if cuts else None

    def _all_done(
        self, generated: np.ndarray, sampling: SamplingConfig, decode_text: Callable[[list[int]], str] | None
    ) -> bool:
        """Whether every row of ``generated`` (B, n) has ended with EOS or a stop sequence."""
        for row in generated.tolist():
            if EOS_ID in row:
                continue
            if decode_text is not None and sampling.stop_sequences:
                if self._stop_at(decode_text(row), sampling.stop_sequences) is not None:
                    continue
            return False
        return True

    def _finish(
        self, row: list[int], sampling: SamplingConfig, decode_text: Callable[[list[int]], str] | None
    ) -> Generation:
        reason = "length"
        if EOS_ID in row:
            row = row[: row.index(EOS_ID)]
            reason = "eos"
        text = decode_text(row) if decode_text is not None else None
        if text is not None and sampling.stop_sequences:
            cut = self._stop_at(text, sampling.stop_sequences)
            if cut is not None:
                text = text[:cut]
                reason = "stop"
                # keep the ids that produced the kept text
                while row and len(decode_text(row)) > cut:  # type: ignore[misc]
                    row = row[:-1]
        return Generation(tokens=row, finish_reason=reason, text=text)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def greedy_by_recompute(model: Decoder, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """Reference decoding: the whole sequence re-run each step, argmax of the last logits (tests)."""
    ids = list(prompt)
    out = []
    for _ in range(max_new_tokens):
        logits = model(jnp.asarray([ids], jnp.int32))
        nxt = int(jnp.argmax(logits[0, -1]))
        out.append(nxt)
        ids.append(nxt)
    return out
