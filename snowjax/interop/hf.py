"""Hugging Face ``transformers`` interop: snowjax checkpoints <-> ``LlamaForCausalLM`` directories.

Export (:func:`export_hf`) reads the parameters of a snowjax checkpoint (nothing else: the
optimizer state of a 1.3B model is twice its size) onto one host device and writes what
``LlamaForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)`` read:
``config.json``, ``generation_config.json``, ``model.safetensors`` (or shards and an index),
``tokenizer.json`` and ``tokenizer_config.json``. No torch or transformers is needed to
export; both are only used by the tests that check the result.

Import (:func:`import_hf`) is the inverse, and refuses any Llama variant the snowjax decoder
does not compute exactly (RoPE scaling, biases, other activations), because a model that
loads but computes something else is worse than an error. :func:`write_init_checkpoint`
turns an import into an Orbax checkpoint that training can start from.

Layout (E hidden, H query heads, K key/value heads, D head dim, F ffn, V vocab). torch's
``Linear`` stores ``(out, in)``; snowjax stores ``(in, *out)`` with heads split out:

=====================================  ===================  ===============================
Hugging Face name                      HF shape             snowjax parameter
=====================================  ===================  ===============================
model.embed_tokens.weight              (V, E)               embed (V, E)
model.layers.i.self_attn.q_proj.weight (H*D, E)             layers.attn.q (E, H, D)
model.layers.i.self_attn.k_proj.weight (K*D, E)             layers.attn.k (E, K, D)
model.layers.i.self_attn.v_proj.weight (K*D, E)             layers.attn.v (E, K, D)
model.layers.i.self_attn.o_proj.weight (E, H*D)             layers.attn.o (H, D, E)
model.layers.i.mlp.gate_proj.weight    (F, E)               layers.mlp.gate (E, F)
model.layers.i.mlp.up_proj.weight      (F, E)               layers.mlp.up (E, F)
model.layers.i.mlp.down_proj.weight    (E, F)               layers.mlp.down (F, E)
model.layers.i.input_layernorm.weight  (E,)                 layers.attn_norm.scale (E,)
model.layers.i.post_attention_...      (E,)                 layers.mlp_norm.scale (E,)
model.norm.weight                      (E,)                 final_norm.scale (E,)
lm_head.weight (untied models only)    (V, E)               lm_head (E, V)
=====================================  ===================  ===============================

Heads are flattened head-major (row ``h * D + d``), as HF's ``view(B, T, H, D)`` reads them;
query head ``h`` uses key/value head ``h // (H // K)`` on both sides (HF ``repeat_kv`` and
the snowjax grouped reshape). RoPE is rotate-half in both (first half of D paired with the
second, ``inv_freq = theta ** (-2i / D)``), so no q/k permutation is needed — unlike the
conversion of Meta's original interleaved-RoPE weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import yaml
from flax import nnx

from snowjax.config import CheckpointConfig, ConfigError, ModelConfig, OptimizerConfig, dump_yaml
from snowjax.data.tokenizer import EOS_ID, EOS_TOKEN, PAD_ID, PAD_TOKEN, SPECIAL_TOKENS, TOKENIZER_FILENAME

log = logging.getLogger(__name__)

HF_CONFIG_FILE = "config.json"
HF_GENERATION_CONFIG_FILE = "generation_config.json"
HF_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
MODEL_YAML = "model.yaml"  # the ModelConfig of an imported checkpoint (write_init_checkpoint)
RUN_CONFIG_YAML = "config.yaml"  # what the training loop writes into a run directory

ExportDtype = Literal["float32", "bfloat16"]
_NP_DTYPES: dict[str, Any] = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
_SAFETENSORS_FLOATS = {"F32", "BF16", "F16"}

# Decoder fields that decide parameter shapes or tying: fixed by the HF checkpoint on import.
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "ffn_size")
_SHAPE_FIELDS_AND_TYING = (*_SHAPE_FIELDS, "tie_embeddings")

# How many directory levels above a step directory a run's config.yaml may sit
# (run/phase_checkpoints/<name>/<step> is the deepest layout).
_SEARCH_LEVELS = 4


class HFInteropError(ConfigError):
    """A checkpoint, ``config.json`` or weight file that cannot be converted; the message says which and why.

    A :class:`ConfigError`, so ``snowjax`` prints it as a one-line error instead of a traceback.
    """


# --------------------------------------------------------------------------- layout mapping

# Per-layer parameters: snowjax path inside a Block -> HF name inside model.layers.{i}.
_LAYER_NAMES: dict[tuple[str, ...], str] = {
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("attn", "q"): "self_attn.q_proj.weight",
    ("attn", "k"): "self_attn.k_proj.weight",
    ("attn", "v"): "self_attn.v_proj.weight",
    ("attn", "o"): "self_attn.o_proj.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
    ("mlp", "gate"): "mlp.gate_proj.weight",
    ("mlp", "up"): "mlp.up_proj.weight",
    ("mlp", "down"): "mlp.down_proj.weight",
}
_GLOBAL_NAMES: dict[tuple[str, ...], str] = {
    ("embed",): "model.embed_tokens.weight",
    ("final_norm", "scale"): "model.norm.weight",
    ("lm_head",): "lm_head.weight",
}
# Buffers some older exports saved; recomputed by transformers, ignored here.
_IGNORED_HF_TENSORS = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")


def _ours_shape(key: tuple[str, ...], cfg: ModelConfig) -> tuple[int, ...]:
    """Shape of one (unstacked) snowjax parameter."""
    e, h, k, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    f, v = cfg.ffn_size, cfg.vocab_size
    return {
        ("embed",): (v, e),
        ("final_norm", "scale"): (e,),
        ("lm_head",): (e, v),
        ("attn_norm", "scale"): (e,),
        ("mlp_norm", "scale"): (e,),
        ("attn", "q"): (e, h, d),
        ("attn", "k"): (e, k, d),
        ("attn", "v"): (e, k, d),
        ("attn", "o"): (h, d, e),
        ("mlp", "gate"): (e, f),
        ("mlp", "up"): (e, f),
        ("mlp", "down"): (f, e),
    }[key]


def _hf_shape(key: tuple[str, ...], cfg: ModelConfig) -> tuple[int, ...]:
    """Shape of the HF tensor that holds snowjax parameter ``key``."""
    shape = _ours_shape(key, cfg)
    if key in (("attn", "q"), ("attn", "k"), ("attn", "v")):
        e, n, d = shape
        return (n * d, e)
    if key == ("attn", "o"):
        h, d, e = shape
        return (e, h * d)
    if len(shape) == 2 and key != ("embed",):  # Linear kernels (in, out) -> torch (out, in)
        return (shape[1], shape[0])
    return shape


def _to_hf(key: tuple[str, ...], a: np.ndarray) -> np.ndarray:
    """snowjax parameter -> HF tensor (contiguous: safetensors writes raw buffers)."""
    if key in (("attn", "q"), ("attn", "k"), ("attn", "v")):
        e = a.shape[0]
        a = a.reshape(e, -1).T
    elif key == ("attn", "o"):
        e = a.shape[-1]
        a = a.reshape(-1, e).T
    elif a.ndim == 2 and key != ("embed",):
        a = a.T
    return np.ascontiguousarray(a)


def _from_hf(key: tuple[str, ...], w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """HF tensor (shape already checked) -> snowjax parameter."""
    shape = _ours_shape(key, cfg)
    if key in (("attn", "q"), ("attn", "k"), ("attn", "v"), ("attn", "o")):
        return np.ascontiguousarray(w.T.reshape(shape))  # (out, in) -> (in, out) -> heads split out
    if w.ndim == 2 and key != ("embed",):
        return np.ascontiguousarray(w.T)
    return w


def _split_params(params: nnx.State, cfg: ModelConfig) -> tuple[dict[tuple[str, ...], np.ndarray], list[dict]]:
    """Host copies of ``params`` as (global parameters, one dict per layer), whatever the layer layout."""
    glob: dict[tuple[str, ...], np.ndarray] = {}
    layers: list[dict[tuple[str, ...], np.ndarray]] = [{} for _ in range(cfg.num_layers)]
    for path, var in nnx.to_flat_state(params):
        value = np.asarray(jax.device_get(var.get_value() if isinstance(var, nnx.Variable) else var))
        path = tuple(str(p) for p in path)
        if path[0] != "layers":
            glob[path] = value
        elif cfg.scan_layers:
            for i in range(cfg.num_layers):
                layers[i][path[1:]] = value[i]
        else:
            layers[int(path[1])][path[2:]] = value
    return glob, layers


def _build_params(
    glob: Mapping[tuple[str, ...], np.ndarray], layers: list[Mapping[tuple[str, ...], np.ndarray]], cfg: ModelConfig
) -> nnx.State:
    """An ``nnx.State`` with exactly the structure of ``Decoder(cfg)``'s params, in ``cfg.param_dtype``."""
    from snowjax.train.state import model_graphdef  # the train package imports optax etc.: keep it lazy

    _, abstract = model_graphdef(cfg)
    dtype = np.dtype(jnp.dtype(cfg.param_dtype))
    device = jax.devices("cpu")[0]
    out = []
    for path, var in nnx.to_flat_state(abstract):
        p = tuple(str(x) for x in path)
        if p[0] != "layers":
            value = glob[p]
        elif cfg.scan_layers:
            value = np.stack([layers[i][p[1:]] for i in range(cfg.num_layers)])
        else:
            value = layers[int(p[1])][p[2:]]
        if value.shape != var.shape:
            raise HFInteropError(f"internal: {'/'.join(p)} has shape {value.shape}, the model needs {var.shape}")
        out.append((path, var.replace(jax.device_put(np.asarray(value).astype(dtype), device))))
    return nnx.from_flat_state(out)


def params_to_hf(params: nnx.State, cfg: ModelConfig, dtype: ExportDtype = "float32") -> dict[str, np.ndarray]:
    """Decoder parameters (scanned or not) as HF ``LlamaForCausalLM`` tensors in ``dtype``.

    Casting goes through float32, so a bfloat16 export rounds each weight once (to nearest even).
    """
    np_dtype = _export_np_dtype(dtype)
    glob, layers = _split_params(params, cfg)
    out: dict[str, np.ndarray] = {}

    def put(name: str, key: tuple[str, ...], a: np.ndarray) -> None:
        t = _to_hf(key, a.astype(np.float32)).astype(np_dtype)
        expected = _hf_shape(key, cfg)
        if t.shape != expected:
            raise HFInteropError(f"{name}: snowjax parameter has shape {a.shape}, the config implies HF {expected}")
        out[name] = t

    put(_GLOBAL_NAMES[("embed",)], ("embed",), glob[("embed",)])
    for i, layer in enumerate(layers):
        for key, name in _LAYER_NAMES.items():
            put(f"model.layers.{i}.{name}", key, layer[key])
    put(_GLOBAL_NAMES[("final_norm", "scale")], ("final_norm", "scale"), glob[("final_norm", "scale")])
    if not cfg.tie_embeddings:
        put(_GLOBAL_NAMES[("lm_head",)], ("lm_head",), glob[("lm_head",)])
    return out


def hf_to_params(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, *, where: str = "weights") -> nnx.State:
    """HF ``LlamaForCausalLM`` tensors as decoder parameters for ``cfg`` (layout and dtype from ``cfg``).

    Every tensor's shape is checked against ``cfg``; missing and unexpected tensors are errors
    (a silently ignored tensor is a model that computes something else).
    """
    used: set[str] = set()

    def get(name: str, key: tuple[str, ...]) -> np.ndarray:
        if name not in tensors:
            raise HFInteropError(f"{where}: tensor {name} is missing")
        w = tensors[name]
        expected = _hf_shape(key, cfg)
        if tuple(w.shape) != expected:
            raise HFInteropError(f"{where}: {name} has shape {tuple(w.shape)}, config.json implies {expected}")
        used.add(name)
        return _from_hf(key, np.asarray(w), cfg)

    glob = {("embed",): get(_GLOBAL_NAMES[("embed",)], ("embed",))}
    glob[("final_norm", "scale")] = get(_GLOBAL_NAMES[("final_norm", "scale")], ("final_norm", "scale"))
    head_name = _GLOBAL_NAMES[("lm_head",)]
    if not cfg.tie_embeddings:
        glob[("lm_head",)] = get(head_name, ("lm_head",))
    elif head_name in tensors:
        # transformers ties (overwrites) lm_head with the embedding when tie_word_embeddings is true.
        used.add(head_name)
        if not np.array_equal(np.asarray(tensors[head_name]), np.asarray(tensors[_GLOBAL_NAMES[("embed",)]])):
            log.warning("%s: lm_head.weight differs from the embedding but the model is tied; it is ignored", where)
    layers = [
        {key: get(f"model.layers.{i}.{name}", key) for key, name in _LAYER_NAMES.items()} for i in range(cfg.num_layers)
    ]
    extra = sorted(n for n in tensors if n not in used and not _IGNORED_HF_TENSORS.match(n))
    if extra:
        shown = ", ".join(extra[:8]) + (f" and {len(extra) - 8} more" if len(extra) > 8 else "")
        raise HFInteropError(
            f"{where}: unexpected tensors {shown} (biases or a layer count that does not match config.json?)"
        )
    return _build_params(glob, layers, cfg)


def _export_np_dtype(dtype: str) -> Any:
    if dtype not in _NP_DTYPES:
        raise HFInteropError(f"dtype: {dtype!r} is not one of {list(_NP_DTYPES)}")
    return _NP_DTYPES[dtype]


# --------------------------------------------------------------------------- config.json


def hf_config_dict(cfg: ModelConfig, dtype: ExportDtype = "float32") -> dict[str, Any]:
    """``config.json`` of a ``LlamaForCausalLM`` that computes what ``Decoder(cfg)`` computes.

    RoPE is written both as ``rope_theta`` (transformers 4.x) and as ``rope_parameters``
    (5.x, which also still reads the former); the dtype both as ``torch_dtype`` and ``dtype``.
    snowjax documents have no BOS: each ends with ``<|endoftext|>``, which therefore is what
    precedes a document, so it doubles as BOS (as in StarCoder); ``<pad>`` pads.
    """
    _export_np_dtype(dtype)
    d = cfg.resolved_head_dim
    if cfg.hidden_size % cfg.num_heads:
        log.warning(
            "hidden_size %d is not a multiple of num_heads %d: transformers 5 refuses such Llama configs "
            "(head_dim %d is written explicitly)",
            cfg.hidden_size,
            cfg.num_heads,
            d,
        )
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": d,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": EOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def _require_int(raw: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    if value is None:
        raise HFInteropError(f"{where}: {key} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HFInteropError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _require_float(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise HFInteropError(f"{where}: {key} must be a positive number, got {value!r}")
    return float(value)


def _rope_theta(raw: Mapping[str, Any], where: str) -> float:
    """The RoPE base of a config.json, refusing any scaled or partial RoPE (snowjax has plain RoPE only)."""
    scaling = raw.get("rope_scaling")
    if scaling:
        raise HFInteropError(
            f"{where}: rope_scaling is set ({scaling!r}); snowjax implements only unscaled RoPE "
            "(rope_type 'default'), so the model would compute something else"
        )
    params = raw.get("rope_parameters")
    theta = raw.get("rope_theta")
    if params:
        if not isinstance(params, dict):
            raise HFInteropError(f"{where}: rope_parameters must be a mapping, got {params!r}")
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise HFInteropError(
                f"{where}: rope_parameters.rope_type is {rope_type!r}; snowjax implements only 'default' RoPE"
            )
        other = sorted(set(params) - {"rope_type", "type", "rope_theta"})
        factor = params.get("partial_rotary_factor", 1.0)
        if other and not (other == ["partial_rotary_factor"] and factor == 1.0):
            raise HFInteropError(f"{where}: rope_parameters has unsupported settings {other}")
        theta = params.get("rope_theta", theta)
    if raw.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFInteropError(f"{where}: partial_rotary_factor must be 1 (snowjax rotates the whole head)")
    return _require_float({"rope_theta": theta}, "rope_theta", where, 10000.0)


def model_config_from_hf(raw: Mapping[str, Any], *, where: str = HF_CONFIG_FILE, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of a Llama ``config.json`` (a parsed dict); refuses what snowjax cannot compute.

    Refused: another ``model_type``, RoPE scaling or partial RoPE, attention or MLP biases, an
    activation other than SiLU, a head count that does not divide. Absent keys take the
    defaults ``LlamaConfig`` would (``rms_norm_eps`` 1e-6, ``tie_word_embeddings`` false, ...),
    so the import computes what transformers computes for the same file.

    ``overrides``: non-shape :class:`ModelConfig` fields to set (``dtype``, ``param_dtype``,
    ``scan_layers``, ``remat``, ``attention``, ``max_seq_len``, ...). Shape fields come from the
    file only.
    """
    if not isinstance(raw, Mapping):
        raise HFInteropError(f"{where}: top level must be a JSON object")
    model_type = raw.get("model_type")
    if model_type != "llama":
        raise HFInteropError(f"{where}: model_type is {model_type!r}; only 'llama' (LlamaForCausalLM) is supported")
    archs = raw.get("architectures") or ["LlamaForCausalLM"]
    if "LlamaForCausalLM" not in archs:
        raise HFInteropError(f"{where}: architectures {archs} does not include LlamaForCausalLM")
    act = raw.get("hidden_act", "silu")
    if act not in ("silu", "swish"):  # the same function in transformers' ACT2FN
        raise HFInteropError(f"{where}: hidden_act is {act!r}; snowjax's MLP is SwiGLU (silu) only")
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key, False):
            raise HFInteropError(f"{where}: {key} is true; snowjax's decoder has no biases")
    if raw.get("attention_dropout") not in (None, 0, 0.0):
        log.warning("%s: attention_dropout %s is ignored (snowjax has no dropout)", where, raw["attention_dropout"])
    heads = _require_int(raw, "num_attention_heads", where)
    hidden = _require_int(raw, "hidden_size", where)
    kv_heads = _require_int(raw, "num_key_value_heads", where, default=heads)
    if heads % kv_heads:
        raise HFInteropError(
            f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    head_dim = raw.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise HFInteropError(f"{where}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        head_dim = hidden // heads
    head_dim = _require_int({"head_dim": head_dim}, "head_dim", where)
    if head_dim % 2:
        raise HFInteropError(f"{where}: head_dim {head_dim} is odd; RoPE needs an even head dimension")
    bad = sorted(set(overrides) & set(_SHAPE_FIELDS_AND_TYING))
    if bad:
        raise HFInteropError(f"overrides {bad} would change the checkpoint's shapes; they come from {where}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise HFInteropError(f"overrides {unknown} are not ModelConfig fields")
    tie = raw.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise HFInteropError(f"{where}: tie_word_embeddings must be true or false, got {tie!r}")
    fields: dict[str, Any] = {
        "vocab_size": _require_int(raw, "vocab_size", where),
        "hidden_size": hidden,
        "num_layers": _require_int(raw, "num_hidden_layers", where),
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": 0 if head_dim * heads == hidden else head_dim,
        "ffn_size": _require_int(raw, "intermediate_size", where),
        "max_seq_len": _require_int(raw, "max_position_embeddings", where, default=2048),
        "rope_theta": _rope_theta(raw, where),
        "norm_eps": _require_float(raw, "rms_norm_eps", where, 1e-6),
        "tie_embeddings": tie,
        "init_std": _require_float(raw, "initializer_range", where, 0.02),
        "param_dtype": "float32",
    }
    fields.update(overrides)
    return ModelConfig(**fields)


# --------------------------------------------------------------------------- safetensors files


def parse_size(size: int | str) -> int:
    """Bytes of ``size``: an int, or a string such as ``"5GB"`` (10^9), ``"2GiB"`` (2^30), ``"500KB"``."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            raise HFInteropError(f"max_shard_size: must be >= 1 byte, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not m:
        raise HFInteropError(f"max_shard_size: cannot read {size!r} (examples: 5GB, 500MB, 2GiB, 1000000)")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}.get(unit)
    if scale is None:
        scale = 2 ** (10 * "KMGT".index(unit[0]) + 10)
    return max(1, int(float(m.group(1)) * scale))


def save_safetensors(tensors: Mapping[str, np.ndarray], out_dir: Path, max_shard_size: int | str) -> list[Path]:
    """Write ``tensors`` as HF does: one ``model.safetensors``, or shards plus an index when larger than the limit.

    Tensors are packed in order; a shard is closed before it would pass ``max_shard_size``,
    and a tensor larger than the limit gets a shard of its own (as ``save_pretrained`` does).
    """
    from safetensors.numpy import save_file

    limit = parse_size(max_shard_size)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + t.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    metadata = {"format": "pt"}  # transformers checks this key before reading a safetensors file
    if len(shards) == 1:
        path = out_dir / SAFETENSORS_FILE
        save_file(dict(shards[0]), str(path), metadata=metadata)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        path = out_dir / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(dict(shard), str(path), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, path.name))
        paths.append(path)
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (out_dir / SAFETENSORS_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return paths


def load_safetensors(hf_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of an HF directory (``model.safetensors`` or an index and its shards) as numpy arrays."""
    from safetensors import safe_open

    index_path = hf_dir / SAFETENSORS_INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise HFInteropError(f"{index_path}: not a safetensors index ({e})") from e
        files = sorted(set(weight_map.values()))
    elif (hf_dir / SAFETENSORS_FILE).is_file():
        weight_map, files = None, [SAFETENSORS_FILE]
    else:
        found = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(p.name for p in hf_dir.glob("*.pth"))
        hint = f" (found {found}: convert them to safetensors first)" if found else ""
        raise HFInteropError(f"{hf_dir}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX_FILE}{hint}")
    tensors: dict[str, np.ndarray] = {}
    for fname in files:
        path = hf_dir / fname
        if not path.is_file():
            raise HFInteropError(f"{index_path}: lists {fname}, which does not exist")
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                if weight_map is not None and weight_map.get(name) != fname:
                    continue
                dtype = f.get_slice(name).get_dtype()
                if dtype not in _SAFETENSORS_FLOATS:
                    floats = sorted(_SAFETENSORS_FLOATS)
                    raise HFInteropError(f"{path}: {name} has dtype {dtype}; expected one of {floats}")
                tensors[name] = f.get_tensor(name)
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise HFInteropError(f"{index_path}: tensors {missing[:8]} are listed but not in their files")
    return tensors


# --------------------------------------------------------------------------- snowjax checkpoints


def _is_step_dir(path: Path) -> bool:
    """A finished Orbax step: an integer name and a ``state`` item (unfinished steps have tmp names)."""
    return path.is_dir() and path.name.isdigit() and (path / "state").is_dir()


def _newest_step(directory: Path) -> Path | None:
    steps = sorted((p for p in directory.iterdir() if _is_step_dir(p)), key=lambda p: int(p.name))
    return steps[-1] if steps else None


def resolve_checkpoint(path: str | Path) -> Path:
    """The step directory (``.../<step>/`` holding ``state/``) that ``path`` designates.

    Accepted: a step directory; a checkpoint directory holding steps (``run/checkpoints``, a
    named ``run/phase_checkpoints/<name>``, or a :func:`write_init_checkpoint` output),
    whose newest step is used; a run directory (its ``checkpoints/``).
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise HFInteropError(f"checkpoint: {path} is not a directory")
    if _is_step_dir(path):
        return path
    for directory in (path, path / "checkpoints"):
        if directory.is_dir():
            newest = _newest_step(directory)
            if newest is not None:
                return newest
    named = path / "phase_checkpoints"
    hint = f"; named checkpoints: {sorted(p.name for p in named.iterdir())}" if named.is_dir() else ""
    raise HFInteropError(
        f"checkpoint: no finished checkpoint step under {path} (expected <step>/state, "
        f"checkpoints/<step>/state or a step directory){hint}"
    )


def _ancestors(path: Path, levels: int = _SEARCH_LEVELS) -> list[Path]:
    return [path, *list(path.parents)[:levels]]


def _read_model_yaml(path: Path) -> ModelConfig:
    """The model section of a run's ``config.yaml``, or a ``model.yaml`` holding ModelConfig fields.

    Only the model is parsed (with the config module's own type checks), so a run config whose
    other sections no longer validate (moved datasets, say) still exports.
    """
    from snowjax.config import _coerce  # the typed section parser: same checks as load_config

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise HFInteropError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise HFInteropError(f"{path}: top level must be a mapping")
    section = raw["model"] if "model" in raw else raw
    return _coerce(section, ModelConfig, "model", path.parent)


def _find_run_config(step_dir: Path) -> Path | None:
    for d in _ancestors(step_dir):
        for name in (RUN_CONFIG_YAML, MODEL_YAML):
            if (d / name).is_file():
                return d / name
    return None


class _NoStepMetadataWarning(logging.Filter):
    """Drops Orbax's warning that an item directory has no step metadata: we read one item of a step on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Metadata file does not exist")


@contextlib.contextmanager
def _reading_one_item() -> Iterator[None]:
    absl_log, quiet = logging.getLogger("absl"), _NoStepMetadataWarning()
    absl_log.addFilter(quiet)
    try:
        yield
    finally:
        absl_log.removeFilter(quiet)


def _array_metadata(state_dir: Path) -> dict[tuple[str, ...], Any]:
    """``params`` leaves of a saved ``state`` item: path (without the Variable's ``value``) -> ArrayMetadata."""
    with _reading_one_item():
        meta = ocp.PyTreeCheckpointer().metadata(state_dir)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, Mapping) or "params" not in tree:
        raise HFInteropError(f"{state_dir}: not a snowjax train state (no params)")
    out = {}
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree["params"], is_leaf=lambda x: hasattr(x, "shape"))
    for kp, leaf in leaves:
        path = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
        if path and path[-1] == "value":
            path = path[:-1]
        out[path] = leaf
    return out


def _abstract_paths(abstract: nnx.State) -> dict[tuple[str, ...], Any]:
    return {tuple(str(p) for p in path): var for path, var in nnx.to_flat_state(abstract)}


def load_params(
    checkpoint: str | Path,
    cfg: ModelConfig,
    *,
    shardings: Any | None = None,
) -> nnx.State:
    """Restore only the parameters of a snowjax checkpoint (Orbax partial restore; no optimizer state read).

    Args:
      checkpoint: anything :func:`resolve_checkpoint` accepts.
      cfg: the model. Its shapes must match the checkpoint's; ``scan_layers`` may differ (the
        layers are stacked or split after reading), and so may ``param_dtype`` (cast).
      shardings: the params' shardings (``abstract_train_state(...)[2].params``) to restore
        straight onto a mesh, as a training start needs; default: one host CPU device, which
        is what export needs whatever devices the process has.

    Returns:
      An ``nnx.State`` with the structure of ``Decoder(cfg)``'s parameters.
    """
    from snowjax.train.state import model_graphdef

    step_dir = resolve_checkpoint(checkpoint)
    state_dir = step_dir / "state"
    saved = _array_metadata(state_dir)
    saved_scan = any(p[0] == "layers" and not p[1].isdigit() for p in saved if len(p) > 1)
    read_cfg = dataclasses.replace(cfg, scan_layers=saved_scan)
    _, abstract = model_graphdef(read_cfg)
    want = _abstract_paths(abstract)
    missing = sorted("/".join(p) for p in set(want) - set(saved))
    unexpected = sorted("/".join(p) for p in set(saved) - set(want))
    wrong = sorted(
        f"{'/'.join(p)} {tuple(saved[p].shape)} vs {tuple(want[p].shape)}"
        for p in set(want) & set(saved)
        if tuple(saved[p].shape) != tuple(want[p].shape)
    )
    problems = [
        f"{what} {items[:6]}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("shape checkpoint vs config", wrong))
        if items
    ]
    if problems:
        raise HFInteropError(
            f"{step_dir}: the checkpoint does not match the model config ({'; '.join(problems)}); "
            "pass the config of the run that wrote it"
        )
    direct = shardings is not None and saved_scan == cfg.scan_layers
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    flat_shardings = _abstract_paths(shardings) if direct else {}

    def restore_arg(path: tuple[Any, ...], var: nnx.Variable) -> nnx.Variable:
        p = tuple(str(x) for x in path)
        sharding = flat_shardings[p].get_value() if direct else host
        dtype = np.dtype(saved[p].dtype) if getattr(saved[p], "dtype", None) is not None else var.dtype
        return var.replace(ocp.ArrayRestoreArgs(sharding=sharding, global_shape=var.shape, dtype=dtype))

    flat = list(nnx.to_flat_state(abstract))
    target = nnx.from_flat_state([(p, v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype))) for p, v in flat])
    restore_args = nnx.from_flat_state([(p, restore_arg(p, v)) for p, v in flat])
    with _reading_one_item():
        restored = ocp.PyTreeCheckpointer().restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item={"params": target}, restore_args={"params": restore_args}, partial_restore=True
            ),
        )["params"]
    if direct:
        return _cast_params(restored, cfg)
    glob, layers = _split_params(restored, read_cfg)
    params = _build_params(glob, layers, cfg)
    if shardings is not None:
        params = jax.device_put(params, shardings)
    return params


def _cast_params(params: nnx.State, cfg: ModelConfig) -> nnx.State:
    dtype = jnp.dtype(cfg.param_dtype)
    return jax.tree.map(lambda a: a if a.dtype == dtype else a.astype(dtype), params)


# --------------------------------------------------------------------------- tokenizer


def _tokenizer_candidates(step_dir: Path, config_path: Path | None) -> list[Path]:
    """Where a run's tokenizer may be: beside the checkpoint/run, then in the datasets its config reads."""
    out = [d / TOKENIZER_FILENAME for d in _ancestors(step_dir)]
    if config_path is not None and config_path.name == RUN_CONFIG_YAML:
        try:
            raw = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError:
            raw = {}
        paths = []
        if isinstance(raw.get("data"), dict) and raw["data"].get("path"):
            paths.append(str(raw["data"]["path"]))
        for phase in raw.get("phases") or []:
            for src in (phase or {}).get("sources") or []:
                if isinstance(src, dict) and src.get("path"):
                    paths.append(str(src["path"]))
        for p in dict.fromkeys(paths):
            path = Path(p)
            bases = [path] if path.is_absolute() else [Path.cwd() / path, config_path.parent / path]
            out += [b / TOKENIZER_FILENAME for b in bases]
    return out


def _find_tokenizer(step_dir: Path, config_path: Path | None) -> Path | None:
    found = [p for p in dict.fromkeys(_tokenizer_candidates(step_dir, config_path)) if p.is_file()]
    if not found:
        return None
    distinct = {p.read_bytes() for p in found}
    if len(distinct) > 1:
        log.warning("several different tokenizers found (%s); exporting %s", [str(p) for p in found], found[0])
    return found[0]


def _write_tokenizer(tokenizer_path: Path, out_dir: Path, cfg: ModelConfig) -> None:
    """``tokenizer.json`` plus the ``tokenizer_config.json`` that makes it a ``PreTrainedTokenizerFast``."""
    from snowjax.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)  # checks snowjax's fixed special-token ids
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > cfg.vocab_size:
        raise HFInteropError(
            f"tokenizer {tokenizer_path} has {n} tokens, more than the model's vocab_size {cfg.vocab_size}"
        )
    shutil.copyfile(tokenizer_path, out_dir / TOKENIZER_FILENAME)
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": EOS_TOKEN,  # byte-level BPE never needs one; transformers wants a string
        "additional_special_tokens": [t for t in SPECIAL_TOKENS[2:] if tok.token_to_id(t) is not None],
        "model_max_length": cfg.max_seq_len,
        # snowjax encodes special-token strings found in text as ordinary bytes (tokenizer.py);
        # tokenizer.json cannot say so, this flag makes transformers do the same.
        "split_special_tokens": True,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / HF_TOKENIZER_CONFIG_FILE).write_text(json.dumps(tok_cfg, indent=2) + "\n")


# --------------------------------------------------------------------------- export / import


def locate_checkpoint(
    checkpoint: str | Path, config_path: str | Path | None = None, tokenizer_path: str | Path | None = None
) -> tuple[Path, Path, ModelConfig, Path | None]:
    """(step dir, model config file, model config, tokenizer file or None) of a snowjax checkpoint.

    The same search as :func:`export_hf`: the newest step under ``checkpoint``, the first
    ``config.yaml``/``model.yaml`` beside it or above, the tokenizer beside the run or in its datasets.
    """
    step_dir = resolve_checkpoint(checkpoint)
    cfg_file = Path(config_path) if config_path is not None else _find_run_config(step_dir)
    if cfg_file is None:
        raise HFInteropError(
            f"checkpoint {step_dir}: no {RUN_CONFIG_YAML} or {MODEL_YAML} found beside it or up to "
            f"{_SEARCH_LEVELS} levels above; pass config_path (--config)"
        )
    cfg = _read_model_yaml(cfg_file)
    if tokenizer_path is not None:
        tok_file: Path | None = Path(tokenizer_path)
        if tok_file.is_dir():
            tok_file = tok_file / TOKENIZER_FILENAME
        if not tok_file.is_file():
            raise HFInteropError(f"tokenizer: no tokenizer file at {tok_file}")
    else:
        tok_file = _find_tokenizer(step_dir, cfg_file)
    return step_dir, cfg_file, cfg, tok_file


def export_hf(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    config_path: str | Path | None = None,
    tokenizer_path: str | Path | None = None,
    dtype: ExportDtype = "float32",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write a snowjax checkpoint as a Hugging Face ``LlamaForCausalLM`` directory; returns ``out_dir``.

    Args:
      checkpoint_dir: a run directory, its ``checkpoints/``, a step directory, or a named phase
        checkpoint (``run/phase_checkpoints/<name>`` or one of its steps); the newest step is used.
      out_dir: created if needed. Existing weight files there are an error unless ``overwrite``
        (a stale shard next to a new single file would be loaded by mistake).
      config_path: YAML with the model (a run ``config.yaml`` or a ``model.yaml``); default: the
        first ``config.yaml``/``model.yaml`` in the checkpoint's directory or the levels above.
      tokenizer_path: ``tokenizer.json`` or a directory holding one; default: beside the run,
        else in the datasets the run's config reads. None found: weights only, with a warning.
      dtype: weights as float32 (exact) or bfloat16.
      max_shard_size: above it, weights are split into shards plus an index (bytes or "5GB").
    """
    out = Path(out_dir)
    np_dtype = _export_np_dtype(dtype)
    limit = parse_size(max_shard_size)
    step_dir, cfg_file, cfg, tok_file = locate_checkpoint(checkpoint_dir, config_path, tokenizer_path)

    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(out.glob("model*.safetensors")) + sorted(out.glob(SAFETENSORS_INDEX_FILE))
    if stale and not overwrite:
        raise HFInteropError(f"{out}: already holds {[p.name for p in stale]}; choose another directory or overwrite")
    for p in stale:
        p.unlink()

    log.info("export: reading parameters of %s (model from %s)", step_dir, cfg_file)
    params = load_params(step_dir, cfg)
    tensors = params_to_hf(params, cfg, dtype)
    del params
    files = save_safetensors(tensors, out, limit)
    (out / HF_CONFIG_FILE).write_text(json.dumps(hf_config_dict(cfg, dtype), indent=2) + "\n")
    generation = {"bos_token_id": EOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    (out / HF_GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")
    if tok_file is not None:
        _write_tokenizer(tok_file, out, cfg)
    else:
        log.warning("export: no tokenizer.json found for %s; pass tokenizer_path (--tokenizer)", step_dir)
    total = sum(t.nbytes for t in tensors.values())
    log.info(
        "export: %s (%d tensors, %.1f MB %s in %d file(s)) -> %s",
        step_dir.name,
        len(tensors),
        total / 1e6,
        np.dtype(np_dtype).name,
        len(files),
        out,
    )
    return out


def import_hf(hf_dir: str | Path, **overrides: Any) -> tuple[ModelConfig, nnx.State]:
    """Read an HF ``LlamaForCausalLM`` directory as (model config, decoder parameters).

    The parameters land on one host CPU device in ``param_dtype`` (float32 unless overridden:
    training keeps float32 master weights; bfloat16 and float16 widen exactly). ``overrides``
    are non-shape :class:`ModelConfig` fields (``scan_layers``, ``dtype``, ``remat``, ...).
    Unsupported configs and mismatched or unexpected tensors raise :class:`HFInteropError`.
    """
    hf = Path(hf_dir)
    cfg_path = hf / HF_CONFIG_FILE
    if not cfg_path.is_file():
        raise HFInteropError(f"{hf}: no {HF_CONFIG_FILE}")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise HFInteropError(f"{cfg_path}: not valid JSON: {e}") from e
    cfg = model_config_from_hf(raw, where=str(cfg_path), **overrides)
    tensors = load_safetensors(hf)
    params = hf_to_params(tensors, cfg, where=str(hf))
    return cfg, params


def _copy_compatible_tokenizer(hf: Path, out: Path) -> bool:
    """Copy the HF directory's tokenizer.json if it has snowjax's special tokens (datasets need those ids)."""
    from snowjax.data.tokenizer import load_tokenizer

    src = hf / TOKENIZER_FILENAME
    if not src.is_file():
        return False
    try:
        load_tokenizer(src)
    except ValueError as e:
        log.warning("import: %s is not a snowjax tokenizer (%s); not copied", src, e)
        return False
    shutil.copyfile(src, out / TOKENIZER_FILENAME)
    return True


def write_init_checkpoint(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    optimizer: OptimizerConfig | None = None,
    step: int = 0,
    **overrides: Any,
) -> Path:
    """Import ``hf_dir`` into a checkpoint directory training can start from; returns its step directory.

    ``out_dir`` becomes a checkpoint directory with the layout of a named phase checkpoint
    (``run/phase_checkpoints/<name>``): ``out_dir/<step>/{state,meta}``, where ``state`` is a
    full :class:`~snowjax.train.state.TrainState` (``step``, the imported params, a fresh
    ``make_optimizer(optimizer or OptimizerConfig(), 1.0)`` state), so the loop's existing
    restore of a named checkpoint reads it as is when the optimizer structure matches.
    Beside it: ``model.yaml`` (the imported :class:`ModelConfig`; a run config can include it
    as ``model: <out_dir>/model.yaml``), ``hf_config.json`` (the source config) and the
    tokenizer when it is a snowjax one. :func:`load_params` on ``out_dir`` reads the
    parameters alone, whatever the run's optimizer settings, which is what a training start
    from an import should use (and :func:`export_hf` on ``out_dir`` round-trips).
    """
    from snowjax.train.checkpoint import Checkpointer
    from snowjax.train.optimizer import make_optimizer
    from snowjax.train.state import TrainState

    hf, out = Path(hf_dir), Path(out_dir)
    if out.is_dir() and any(_is_step_dir(p) or p.name.isdigit() for p in out.iterdir()):
        raise HFInteropError(f"{out}: already holds checkpoint steps; choose a new directory")
    cfg, params = import_hf(hf, **overrides)
    tx = make_optimizer(optimizer or OptimizerConfig(), 1.0)
    with jax.default_device(jax.devices("cpu")[0]):
        state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=tx.init(params))
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(out, CheckpointConfig(every_steps=1, keep_last=1, async_save=False))
    try:
        meta = {"imported_from": str(hf.absolute()), "format": "huggingface-llama", "step": step}
        ckpt.save(step, state, None, meta=meta)
    finally:
        ckpt.close()
    (out / MODEL_YAML).write_text(dump_yaml(cfg))
    shutil.copyfile(hf / HF_CONFIG_FILE, out / "hf_config.json")
    _copy_compatible_tokenizer(hf, out)
    log.info("import: %s -> %s (step %d, %s)", hf, out / str(step), step, _describe(cfg))
    return out / str(step)


def _describe(cfg: ModelConfig) -> str:
    from snowjax.model.decoder import count_params

    return (
        f"{count_params(cfg):,} parameters, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"heads {cfg.num_heads}/{cfg.num_kv_heads}, vocab {cfg.vocab_size}"
    )
