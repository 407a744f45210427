"""Hand-written CPU kernels for what XLA:CPU's library calls do slowly, registered as XLA FFI targets.

Two, both float32, for a decode step:

- ``thin_matmul``: ``x (M, K) @ W (K, N)`` for the few rows of a decode step (M = the batch).
  XLA:CPU's dots stream the weights of such a product at well under the machine's memory
  bandwidth once M > 1 (on a 2-core AMD EPYC: 18 GB/s for M = 2-8, against 43-55 GB/s for one
  row); this kernel keeps a column tile of every row in registers and reads each weight once
  per call, whatever M is (33-50 GB/s there, M = 1-8). W is packed once into column tiles
  (:func:`pack_columns`), so one tile is a contiguous run of memory.
- ``decode_attention``: one new token per row over its filled cache slots only (the row's first
  real slot to the current one), where XLA's products and masked softmax read every slot of the
  preallocated cache.

The kernels are C++ (``decode.cc``), compiled on first use with the host's compiler
(``g++ -O3 -march=native``, or ``$CXX``) into a cache directory (``$SNOWJAX_KERNEL_CACHE``,
default ``~/.cache/snowjax/kernels``; the file name hashes the source, flags, FFI header and CPU),
and registered with ``jax.ffi``. Without a compiler, or with ``SNOWJAX_CPU_KERNELS=0``,
:func:`cpu_kernels_available` is False and callers keep XLA's own code.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

TILE = 32  # columns per packed tile (thin_matmul.cc's kTile)
_TARGET = "snowjax_thin_matmul"
_ATTENTION_TARGET = "snowjax_decode_attention"
_SOURCE = Path(__file__).with_name("decode.cc")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
_lock = threading.Lock()
_state: dict[str, Any] = {}  # "ok": bool once tried; "lib": the loaded library (kept alive)


def _cache_dir() -> Path:
    if os.environ.get("SNOWJAX_KERNEL_CACHE"):
        return Path(os.environ["SNOWJAX_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "snowjax" / "kernels"


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the architecture and the CPU's feature flags (a shared
    cache directory may serve several kinds of machine)."""
    ident = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features", "model name")):
                ident += line
    except OSError:
        ident += platform.processor()
    return ident


def _build() -> Path:
    """Compile ``decode.cc`` into the cache (once per source, compiler, jaxlib and CPU); its path."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise RuntimeError("no C++ compiler on PATH (g++, c++, clang++ or $CXX)")
    include = jax.ffi.include_dir()
    api = (Path(include) / "xla/ffi/api/api.h").read_bytes()  # the FFI ABI the library is built against
    key_text = "\n".join([_SOURCE.read_text(), cxx, *_FLAGS, include, hashlib.sha256(api).hexdigest(), _cpu_identity()])
    out = _cache_dir() / f"decode-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("compiling snowjax's CPU kernels with %s into %s", cxx, out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        cmd = [cxx, *_FLAGS, f"-I{include}", str(_SOURCE), "-o", str(tmp_out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        os.replace(tmp_out, out)  # atomic: concurrent builders each write their own temp file
    return out


def cpu_kernels_available() -> bool:
    """Whether :func:`thin_matmul` and :func:`decode_attention` can run here (CPU backend; built and
    registered on first call)."""
    if os.environ.get("SNOWJAX_CPU_KERNELS", "1") == "0" or jax.default_backend() != "cpu":
        return False
    with _lock:
        if "ok" not in _state:
            try:
                lib = ctypes.cdll.LoadLibrary(str(_build()))
                jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.SnowjaxThinMatmul), platform="cpu")
                capsule = jax.ffi.pycapsule(lib.SnowjaxDecodeAttention)
                jax.ffi.register_ffi_target(_ATTENTION_TARGET, capsule, platform="cpu")
                _state.update(ok=True, lib=lib)
            except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
                log.warning("snowjax's CPU decode kernels are unavailable, XLA's code is used instead: %s", e)
                _state["ok"] = False
        return bool(_state["ok"])


def pack_columns(w: jax.Array) -> jax.Array:
    """W (K, N) float32 as (N / TILE, K, TILE) column tiles, the layout :func:`thin_matmul` reads."""
    k, n = w.shape
    if n % TILE:
        raise ValueError(f"pack_columns needs a multiple of {TILE} columns, got {n}")
    return jnp.transpose(w.reshape(k, n // TILE, TILE), (1, 0, 2))


def thin_matmul(x: jax.Array, packed: jax.Array) -> jax.Array:
    """``x (..., K) @ W`` in float32 for W packed by :func:`pack_columns`: (..., N).

    Meant for few rows (a decode step's batch): each weight is read once per call, and the
    rows are worked through eight (four without AVX-512) at a time.
    """
    tiles, k, tile = packed.shape
    if x.shape[-1] != k or tile != TILE:
        raise ValueError(f"thin_matmul: x {x.shape} and packed weights {packed.shape} do not match")
    if x.dtype != jnp.float32 or packed.dtype != jnp.float32:
        raise ValueError(f"thin_matmul is float32 only, got {x.dtype} and {packed.dtype}")
    lead = x.shape[:-1]
    rows = x.reshape(-1, k)
    out = jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct((rows.shape[0], tiles * TILE), jnp.float32))(rows, packed)
    return out.reshape(*lead, tiles * TILE)


def decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, pads: jax.Array, index: jax.Array) -> jax.Array:
    """One new token per row attending over its cache: q (B, H, D), k and v (B, K, S, D) -> (B, H, D).

    Row b attends over slots ``pads[b]`` to ``index`` (its real tokens so far, the new one's
    included), query head j over kv head ``j // (H / K)``; scores scaled by ``D ** -0.5``,
    softmax in float32. Only those slots are read.
    """
    b, h, d = q.shape
    if k.ndim != 4 or k.shape != v.shape or k.shape[0] != b or k.shape[3] != d or h % k.shape[1]:
        raise ValueError(f"decode_attention: q {q.shape}, k {k.shape}, v {v.shape} do not match")
    if not all(a.dtype == jnp.float32 for a in (q, k, v)):
        raise ValueError("decode_attention is float32 only")
    call = jax.ffi.ffi_call(_ATTENTION_TARGET, jax.ShapeDtypeStruct(q.shape, jnp.float32))
    return call(q, k, v, pads.astype(jnp.int32), jnp.asarray(index, jnp.int32).reshape(()))
