"""Training metrics: model FLOPs, device peaks, tokens/s and MFU, and the metrics logger.

FLOP convention (PaLM appendix B / MaxText): a multiply-add is 2 FLOPs; training
costs 3x the forward pass (forward 1x, backward 2x); rematerialisation is *not*
counted, so MFU measures useful model work. Per token, with ``d`` = hidden size,
``q = num_heads * head_dim``, ``kv = num_kv_heads * head_dim``, ``f`` = FFN width,
``V`` = vocab, ``L`` = layers and ``s`` = sequence length, the forward pass is

    per layer:   2 * (d*q + 2*d*kv + q*d)        QKV and output projections
               + 2 * 3*d*f                       SwiGLU gate, up and down
               + 2 * 2*s*q                       scores Q.K^T and weights.V, full s x s mask
    once:        2 * d*V                         output head (counted even when tied)

i.e. ``2*N_matmul + 4*L*s*q`` and training ``6*N_matmul + 12*L*s*q`` FLOPs/token,
which is PaLM's ``6N + 12*L*d*s`` with ``N`` the matmul parameters (embedding
lookup excluded, head included). The attention term uses the full mask, not the
halved causal work, as PaLM and MaxText do; norms, RoPE, softmax and the loss
are not counted.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import jax
import jax.numpy as jnp
import numpy as np

from snowjax.config import ModelConfig

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- FLOPs


def matmul_params(model: ModelConfig) -> int:
    """Parameters that take part in a matmul per token: layer projections, SwiGLU and the output head.

    Excludes the embedding lookup (free) and norm scales; includes the head (``vocab x hidden``)
    whether or not it is tied to the embedding.
    """
    d, f, v = model.hidden_size, model.ffn_size, model.vocab_size
    q = model.num_heads * model.resolved_head_dim
    kv = model.num_kv_heads * model.resolved_head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    return model.num_layers * per_layer + d * v


def attention_flops_per_token(model: ModelConfig, seq_len: int) -> float:
    """Forward FLOPs per token of attention scores and weighted values (full mask), all layers."""
    q = model.num_heads * model.resolved_head_dim
    return float(model.num_layers * 2 * 2 * seq_len * q)


def flops_per_token(model: ModelConfig, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token: ``6 * matmul_params + 3 * attention``.

    For the 1.3B config at ``seq_len`` 8192 this is about 1.30e10 FLOPs/token
    (see the module docstring for the convention).
    """
    return 3.0 * (2.0 * matmul_params(model) + attention_flops_per_token(model, seq_len))


def model_flops_per_step(model: ModelConfig, seq_len: int, tokens: int) -> float:
    """Training FLOPs of one optimizer step that processes ``tokens`` tokens (all devices together)."""
    return flops_per_token(model, seq_len) * tokens


# ----------------------------------------------------------------------------- peaks

# (device_kind substring, dense bf16 FLOP/s per device); first match wins, so specific names come first.
_PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h200", 989e12),
    ("a100", 312e12),
    ("v6 lite", 918e12),
    ("v6e", 918e12),
    ("trillium", 918e12),
    ("v5 lite", 197e12),
    ("v5lite", 197e12),
    ("v5e", 197e12),
    ("v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports itself as "TPU v5"
    ("v4", 275e12),
)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of ``device`` (default: the first device), or None if unknown (CPU)."""
    device = device if device is not None else jax.devices()[0]
    if device.platform == "cpu":
        return None
    kind = device.device_kind.lower()
    for needle, peak in _PEAK_BF16:
        if needle in kind:
            return peak
    return None


def measure_matmul_flops(n: int = 2048, dtype: Any = jnp.float32, iters: int = 5) -> float:
    """Achieved FLOP/s of a jitted ``n x n @ n x n`` matmul on the default device (best of ``iters``).

    Compilation and one warm-up call are excluded; each timed call blocks on its result.
    Counts ``2 * n**3`` FLOPs per matmul.
    """
    if n < 1 or iters < 1:
        raise ValueError(f"need n >= 1 and iters >= 1, got n={n}, iters={iters}")
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype=dtype)
    b = jax.random.normal(kb, (n, n), dtype=dtype)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = math.inf
    for _ in range(iters):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / max(best, 1e-12)


def resolve_peak_flops(peak_flops_per_device_cfg: float = 0.0, devices: Sequence[jax.Device] | None = None) -> float:
    """Peak FLOP/s summed over ``devices`` (default: all global devices), for MFU.

    ``peak_flops_per_device_cfg`` > 0 (``train.peak_flops_per_device``) wins. Otherwise the
    known bf16 peak of the device kind is used; for unknown kinds (CPU) a float32 matmul is
    measured once on this host and counted once per process, because simulated CPU devices
    share the host's cores.
    """
    devices = list(devices) if devices is not None else jax.devices()
    if peak_flops_per_device_cfg > 0:
        return peak_flops_per_device_cfg * len(devices)
    peak = peak_flops_per_device(devices[0])
    if peak is not None:
        return peak * len(devices)
    measured = measure_matmul_flops()
    processes = len({d.process_index for d in devices})
    logger.info("no known peak for %s; measured matmul %.3g FLOP/s per host", devices[0].device_kind, measured)
    return measured * processes


class Throughput:
    """Turns (tokens, seconds) into tokens/s, achieved model FLOP/s and MFU.

    Args:
      flops_per_token: training FLOPs per token (:func:`flops_per_token`).
      peak_flops: peak FLOP/s summed over all devices taking part; None or 0 disables MFU.
    """

    def __init__(self, flops_per_token: float, peak_flops: float | None) -> None:
        self.flops_per_token = float(flops_per_token)
        self.peak_flops = float(peak_flops) if peak_flops else None

    def tokens_per_sec(self, tokens: float, seconds: float) -> float:
        """Tokens per second (0 when no time elapsed)."""
        return tokens / seconds if seconds > 0 else 0.0

    def mfu(self, tokens: float, seconds: float) -> float | None:
        """Model FLOPs utilisation as a fraction in [0, 1] (None when the peak is unknown)."""
        if self.peak_flops is None:
            return None
        return self.tokens_per_sec(tokens, seconds) * self.flops_per_token / self.peak_flops

    def __call__(self, tokens: float, seconds: float) -> dict[str, float]:
        """Metrics for the logger: ``tokens_per_sec``, ``model_flops_per_sec`` and, if known, ``mfu``."""
        tps = self.tokens_per_sec(tokens, seconds)
        out = {"tokens_per_sec": tps, "model_flops_per_sec": tps * self.flops_per_token}
        mfu = self.mfu(tokens, seconds)
        if mfu is not None:
            out["mfu"] = mfu
        return out


# ----------------------------------------------------------------------------- logging

_TB_WARNED = False


def _to_json_value(value: Any) -> Any:
    """A JSON-safe scalar: ints stay ints, arrays become floats, NaN/inf become None (strict JSON)."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    x = float(np.asarray(value))
    return x if math.isfinite(x) else None


def _si(x: float) -> str:
    """Compact magnitude: 12345 -> '12.3k'."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{suffix}"
    return f"{x:.1f}"


def format_console(step: int, metrics: Mapping[str, Any]) -> str:
    """One console line: ``step 120 | loss 3.412 | gnorm 0.91 | lr 5.3e-04 | 12.3k tok/s | MFU 41.2%``.

    Known keys: ``loss``, ``grad_norm``, ``lr``, ``tokens_per_sec``, ``mfu`` (a fraction); other
    numeric keys follow as ``name value``.
    """
    parts = [f"step {step}"]
    formats = {
        "loss": lambda v: f"loss {v:.3f}",
        "grad_norm": lambda v: f"gnorm {v:.2f}",
        "lr": lambda v: f"lr {v:.1e}",
        "tokens_per_sec": lambda v: f"{_si(v)} tok/s",
        "mfu": lambda v: f"MFU {100 * v:.1f}%",
    }
    for key, fmt in formats.items():
        if key in metrics and metrics[key] is not None:
            parts.append(fmt(float(np.asarray(metrics[key]))))
    skip = set(formats) | {"step", "time", "model_flops_per_sec"}
    for key, value in metrics.items():
        if key not in skip and isinstance(value, (int, float, np.number, np.ndarray, jax.Array)):
            parts.append(f"{key} {float(np.asarray(value)):.4g}")
    return " | ".join(parts)


class MetricsLogger:
    """Writes metrics as JSON lines, TensorBoard scalars and a console line; only the primary process writes.

    ``run_dir/metrics.jsonl`` is opened in append mode, so a resumed run continues the same file;
    each line is ``{"step": int, "time": unix seconds, **metrics}`` with NaN/inf written as null.
    TensorBoard event files go to ``run_dir/tensorboard`` when ``tensorboard`` is set and
    tensorboardX imports.
    """

    def __init__(self, run_dir: str | Path, is_primary: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.is_primary = is_primary
        self._file = None
        self._tb = None
        if not is_primary:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        if tensorboard:
            self._tb = _make_tb_writer(self.run_dir / "tensorboard")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record ``metrics`` (scalars; jax/numpy scalars are converted) at optimizer ``step``."""
        if not self.is_primary:
            return
        record: dict[str, Any] = {"step": int(step), "time": time.time()}
        record.update({k: _to_json_value(v) for k, v in metrics.items()})
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, int(step))
        logger.info(format_console(int(step), {k: v for k, v in metrics.items() if _to_json_value(v) is not None}))

    def close(self) -> None:
        """Flush and close the files (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _make_tb_writer(logdir: Path) -> Any:
    """A ``tensorboardX.SummaryWriter`` on ``logdir``, or None (warning once) if tensorboardX is missing."""
    global _TB_WARNED
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        if not _TB_WARNED:
            logger.warning("tensorboardX not importable (%s); TensorBoard logging disabled", e)
            _TB_WARNED = True
        return None
    return SummaryWriter(logdir=str(logdir))
