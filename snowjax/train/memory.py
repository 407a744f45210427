"""Per-device memory of a train step, estimated before anything compiles.

The step holds, on each device (bytes; ``P`` = this device's share of the parameters):

- **state**: parameters ``P x param_dtype`` plus Adam's two moments in the same dtype
  (``2 P``) and the step counters; donated, so the new state reuses these buffers.
- **gradients**: ``P x param_dtype`` (twice with gradient accumulation: the running sum
  and one microbatch's).
- **saved activations**: what the forward pass keeps for the backward, per layer and per
  token of this device's microbatch rows, by ``model.remat``:

  ``none``                every residual autodiff keeps (listed in :func:`layer_residual_bytes`)
  ``full``                the layer input only; the backward recomputes one layer at a time
  ``dots``                layer input + every matmul output, attention scores included
  ``dots_no_batch``       layer input + the projections' outputs (not the attention einsums)
  ``save_attention_out``  layer input + the attention output

- **layer working set**: with remat, the recomputed layer's matmul and softmax outputs
  alive while its backward runs (elementwise work fuses into its consumers); without
  remat, the gradients flowing through one layer.
- **logits**: float32 logits and their softmax (``2 x rows x T x V / tensor x 4``).
- **gathered weights** (fsdp or tensor > 1): one layer's weights gathered in the compute
  dtype, twice (XLA prefetches the next layer), and the whole embedding table (it is
  gathered for the lookup and the tied head).

Sharding follows ``parallel.LOGICAL_RULES``: parameters by their logical names, rows of
the batch over ``data x fsdp``, heads / FFN / vocabulary over ``tensor``. The test
(``tests/train/test_memory.py``) holds the total within 15% of XLA's own figure for the
compiled step on CPU (arguments + outputs - aliased + temporaries).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from snowjax.config import ModelConfig
from snowjax.parallel import logical_to_spec

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one train step, by what holds them (see the module docstring)."""

    params: int
    optimizer: int
    gradients: int
    batch: int
    saved_activations: int
    layer_working_set: int
    logits: int
    gathered_weights: int
    rows_per_device: int  # microbatch rows each device runs at once
    seq_len: int
    remat: str

    @property
    def total(self) -> int:
        return sum(getattr(self, f) for f in _PARTS)

    def table(self) -> str:
        """A small aligned table, one line per part, in GiB (MiB for small runs); the loop logs it."""
        unit, scale = ("GiB", GiB) if self.total >= GiB else ("MiB", 2**20)
        rows = [f"{name.replace('_', ' '):<19}{getattr(self, name) / scale:9.2f} {unit}" for name in _PARTS]
        rows.append(f"{'total':<19}{self.total / scale:9.2f} {unit}")
        return "\n".join(rows)


_PARTS = (
    "params",
    "optimizer",
    "gradients",
    "batch",
    "saved_activations",
    "layer_working_set",
    "logits",
    "gathered_weights",
)


def _param_bytes_per_device(model: ModelConfig, mesh_shape: Mapping[str, int]) -> tuple[int, int, int]:
    """(this device's parameter bytes, one layer's full weight elements, embedding elements)."""
    from flax import nnx

    from snowjax.train.state import model_graphdef

    _, params = model_graphdef(model)
    itemsize = _BYTES[model.param_dtype]
    total = 0
    for var in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
        names = meta.get("out_sharding") or meta.get("sharding_names")
        shape = list(value.shape)
        if names:
            for i, axes in enumerate(logical_to_spec(tuple(names))):
                axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
                shape[i] = math.ceil(shape[i] / math.prod(mesh_shape[a] for a in axes_t))
        total += int(np.prod(shape)) * itemsize
    e, f = model.hidden_size, model.ffn_size
    h, k, d = model.num_heads, model.num_kv_heads, model.resolved_head_dim
    layer = 2 * e * h * d + 2 * e * k * d + 3 * e * f + 2 * e
    return total, layer, model.vocab_size * e


def _attention_keys(model: ModelConfig, seq_len: int) -> float:
    """Keys each query scores, on average, in the einsum path (causal blocks skip the future)."""
    blk = model.attention_block
    if model.attention != "xla" or blk <= 0 or seq_len <= blk:
        return float(seq_len)
    n = math.ceil(seq_len / blk)
    return sum(min((i + 1) * blk, seq_len) * min(blk, seq_len - i * blk) for i in range(n)) / seq_len


def layer_residual_bytes(model: ModelConfig, seq_len: int, tensor: int = 1) -> dict[str, float]:
    """Bytes per token that one layer keeps for its backward, by tensor, as XLA keeps them.

    Autodiff would also keep the norms' products and the repeated k/v heads; XLA fuses
    those cheap elementwise results into their consumers and recomputes them in the
    backward, so they are not counted. ``c`` is the compute dtype's size; heads, kv heads
    and FFN columns are divided over ``tensor`` devices. The einsum attention keeps three
    float32 (T x keys) arrays per head (masked scores, exponentials, probabilities); the
    fused cuDNN kernel keeps only a float32 log-sum-exp per head.
    """
    c = _BYTES[model.dtype]
    e, f = model.hidden_size, model.ffn_size / tensor
    d = model.resolved_head_dim
    heads, kv_heads = model.num_heads / tensor, model.num_kv_heads / tensor
    q, kv = heads * d, kv_heads * d
    out: dict[str, float] = {
        "residual stream": 2 * e * c,  # x + attention, x + MLP (the next layer's input)
        "q, k, v after RoPE": (q + 2 * kv) * c + 4 * (d / 2) * 4,  # + sin/cos tables (float32)
        "attention output": q * c,
        "SwiGLU": 6 * f * c,  # gate, up, silu's three residuals, their product
    }
    if model.attention == "cudnn":
        out["attention softmax"] = heads * 4
    else:
        out["attention softmax"] = heads * _attention_keys(model, seq_len) * 3 * 4
    return out


def _layer_bytes_per_token(model: ModelConfig, seq_len: int, tensor: int) -> tuple[float, float]:
    """(bytes per token saved per layer, bytes per token of the one-layer working set)."""
    c = _BYTES[model.dtype]
    e, f = model.hidden_size, model.ffn_size / tensor
    d = model.resolved_head_dim
    heads, kv_heads = model.num_heads / tensor, model.num_kv_heads / tensor
    q, kv = heads * d, kv_heads * d
    residuals = sum(layer_residual_bytes(model, seq_len, tensor).values())
    keys = _attention_keys(model, seq_len)
    scores = 0.0 if model.attention == "cudnn" else 3 * heads * keys * 4
    # A recomputed layer holds its residuals again while its backward runs, plus the
    # gradient flowing through it.
    working = residuals + 2 * e * c
    layer_input = e * c
    policy = model.remat
    if policy == "none":
        return residuals, 2 * e * c
    if policy == "full":
        return layer_input, working
    if policy == "dots":  # every matmul output: q/k/v, scores and probabilities, attention out, o, gate/up, down
        kept = (q + 2 * kv) * c + scores * 2 / 3 + q * c + e * c + 2 * f * c + e * c
        return layer_input + kept, working - kept
    if policy == "dots_no_batch":  # the projections only (the attention einsums have batch dims)
        kept = (q + 2 * kv) * c + e * c + 2 * f * c + e * c
        return layer_input + kept, working - kept
    if policy == "save_attention_out":
        return layer_input + q * c, working - q * c
    raise ValueError(f"model.remat: unknown policy {policy!r}")


def estimate_train_memory(
    model: ModelConfig,
    mesh_shape: Mapping[str, int],
    global_batch_size: int,
    seq_len: int,
    grad_accum_steps: int = 1,
) -> MemoryEstimate:
    """Per-device bytes of the train step for this model on a (data, fsdp, tensor) mesh.

    ``global_batch_size`` rows of ``seq_len`` tokens per optimizer step, split into
    ``grad_accum_steps`` microbatches; each microbatch's rows are spread over
    ``data x fsdp`` devices.
    """
    mesh = {"data": 1, "fsdp": 1, "tensor": 1, **dict(mesh_shape)}
    dp, tp = mesh["data"] * mesh["fsdp"], mesh["tensor"]
    rows = max(1, global_batch_size // grad_accum_steps // dp)
    tokens = rows * seq_len
    c = _BYTES[model.dtype]
    p_bytes, layer_elems, embed_elems = _param_bytes_per_device(model, mesh)
    saved_per_token, working_per_token = _layer_bytes_per_token(model, seq_len, tp)
    e = model.hidden_size
    # Embedding output and the final norm's products stay alive beside the layers.
    saved = model.num_layers * saved_per_token * tokens + 3 * e * c * tokens
    # The loss's float32 logits and softmax are gone before the layers' backward starts,
    # so the peak holds one or the other.
    logits = 2 * tokens * math.ceil(model.vocab_size / tp) * 4
    working = working_per_token * tokens
    gathered = 0
    if mesh["fsdp"] > 1 or tp > 1:
        gathered = int(2 * layer_elems / tp * c + embed_elems * c)
    return MemoryEstimate(
        params=p_bytes,
        optimizer=2 * p_bytes,
        gradients=p_bytes * (2 if grad_accum_steps > 1 else 1),
        batch=4 * 4 * (global_batch_size // dp) * seq_len,  # inputs, targets, segment ids, positions (int32)
        saved_activations=int(saved),
        layer_working_set=int(working) if working > logits else 0,
        logits=int(logits) if logits >= working else 0,
        gathered_weights=gathered,
        rows_per_device=rows,
        seq_len=seq_len,
        remat=model.remat,
    )


def xla_step_bytes(memory_analysis: Any) -> int:
    """What XLA says a compiled step needs per device: arguments + outputs - donated (aliased) + temporaries."""
    m = memory_analysis
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)
