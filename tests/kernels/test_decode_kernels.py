"""snowjax's CPU decode kernels (thin matmul, decode attention): what they compute, what they refuse, the fallback."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snowjax import kernels
from snowjax.kernels import TILE, cpu_kernels_available, pack_columns, thin_matmul


@pytest.fixture(scope="module")
def built() -> None:
    if not cpu_kernels_available():
        pytest.skip("snowjax's CPU kernel does not build here (no C++ compiler)")


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9, 17])
@pytest.mark.parametrize("k,n", [(7, 32), (64, 96), (768, 2304)])
def test_matches_numpy(built: None, rows: int, k: int, n: int) -> None:
    rng = np.random.default_rng(rows * 1000 + k)
    x = rng.standard_normal((rows, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    got = np.asarray(jax.jit(lambda x, w: thin_matmul(x, pack_columns(w)))(x, w))
    want = x.astype(np.float64) @ w.astype(np.float64)
    # float32 sums of k products: error grows with sqrt(k) x the product size
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * k)


def test_leading_dims_and_inside_a_loop(built: None) -> None:
    """(B, T, K) inputs, and a call per step of a fori_loop as a decode loop makes it."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64), dtype=np.float32) / 8
    x = rng.standard_normal((3, 1, 64), dtype=np.float32)
    packed = pack_columns(jnp.asarray(w))

    def run(x: jax.Array) -> jax.Array:
        return jax.lax.fori_loop(0, 5, lambda i, y: jnp.tanh(thin_matmul(y, packed)), x)

    want = x
    for _ in range(5):
        want = np.tanh(want @ w)
    got = jax.jit(run)(jnp.asarray(x))
    assert got.shape == (3, 1, 64)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_refuses_what_it_does_not_compute(built: None) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        pack_columns(jnp.ones((8, 40)))
    packed = pack_columns(jnp.ones((8, 64)))
    with pytest.raises(ValueError, match="do not match"):
        thin_matmul(jnp.ones((2, 9)), packed)
    with pytest.raises(ValueError, match="float32 only"):
        thin_matmul(jnp.ones((2, 8), jnp.bfloat16), packed)
    assert packed.shape == (64 // TILE, 8, TILE)


def test_library_is_built_once_per_cache(built: None, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNOWJAX_KERNEL_CACHE", str(tmp_path))
    first = kernels._build()
    stamp = first.stat().st_mtime_ns
    assert kernels._build() == first and first.stat().st_mtime_ns == stamp  # found, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left behind


def test_switched_off_or_without_a_compiler_it_falls_back(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kernels, "_state", {})  # as in a fresh process
    monkeypatch.setenv("SNOWJAX_CPU_KERNELS", "0")
    assert not cpu_kernels_available()
    monkeypatch.delenv("SNOWJAX_CPU_KERNELS")
    monkeypatch.setenv("SNOWJAX_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    with caplog.at_level(logging.WARNING, logger="snowjax.kernels"):
        assert not cpu_kernels_available()
    assert "XLA's code is used instead" in caplog.text
    assert not list(tmp_path.glob("*.so"))


def test_generation_without_the_kernel_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy tokens of a tiny model with the kernel and with XLA's dots (the fallback) agree."""
    from flax import nnx

    from snowjax import generate
    from snowjax.config import ModelConfig
    from snowjax.generate import Generator, SamplingConfig
    from snowjax.model.decoder import Decoder

    cfg = ModelConfig(
        vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=128, max_seq_len=128,
        dtype="float32", param_dtype="float32", init_std=0.2, scan_layers=False,
    )  # fmt: skip
    params = nnx.state(Decoder(cfg, nnx.Rngs(0)), nnx.Param)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    sampling = SamplingConfig(max_new_tokens=12)
    kernel = Generator(cfg, params)
    assert kernel.weights["head"].ndim == (3 if cpu_kernels_available() else 2)
    with_kernel = kernel.generate(prompts, sampling)
    monkeypatch.setattr(generate, "cpu_kernels_available", lambda: False)
    without = Generator(cfg, params)
    assert without.weights["head"].ndim == 2  # (in, out) for XLA's dot
    assert [g.tokens for g in without.generate(prompts, sampling)] == [g.tokens for g in with_kernel]


def test_independent_products_in_one_program(built: None) -> None:
    """Products XLA may run at the same time on its thread pool (each shares its tiles out to that pool)."""
    rng = np.random.default_rng(1)
    ws = [rng.standard_normal((256, 1024), dtype=np.float32) / 16 for _ in range(4)]
    x = rng.standard_normal((8, 256), dtype=np.float32)
    packed = [pack_columns(jnp.asarray(w)) for w in ws]
    f = jax.jit(lambda x, ps: sum(thin_matmul(x, p) for p in ps))
    want = sum(x @ w for w in ws)
    for _ in range(20):
        np.testing.assert_allclose(np.asarray(f(x, packed)), want, atol=1e-4)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)], ids=["mha", "gqa"])
@pytest.mark.parametrize("index", [0, 9, 23])
def test_decode_attention_matches_the_masked_softmax(built: None, heads: int, kv_heads: int, index: int) -> None:
    """Over slots pads[b]..index only, as generate's masked attention over the whole cache computes it."""
    from snowjax.generate import _decode_attention
    from snowjax.kernels import decode_attention

    b, s, d = 3, 24, 32
    rng = np.random.default_rng(index + heads)
    q = rng.standard_normal((b, heads, d), dtype=np.float32)
    k = rng.standard_normal((b, kv_heads, s, d), dtype=np.float32)
    v = rng.standard_normal((b, kv_heads, s, d), dtype=np.float32)
    pads = np.array([0, min(3, index), index], np.int32)  # the last row has one real slot: the new token's
    slot = np.arange(s)
    mask = (slot[None, None, :] <= index) & (slot[None, None, :] >= pads[:, None, None])  # (B, 1, S)
    want = _decode_attention(jnp.asarray(q)[:, None], jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask))[:, 0]
    got = jax.jit(decode_attention)(q, k, v, pads, jnp.int32(index))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6)
    # slots past index or before a row's pad do not matter
    k2, v2 = k.copy(), v.copy()
    k2[:, :, index + 1 :], v2[:, :, index + 1 :] = 1e4, -1e4
    k2[2, :, :index], v2[2, :, :index] = np.nan, np.nan
    np.testing.assert_array_equal(np.asarray(jax.jit(decode_attention)(q, k2, v2, pads, jnp.int32(index))), got)


def test_decode_attention_refuses_mismatched_shapes(built: None) -> None:
    from snowjax.kernels import decode_attention

    q, kv = jnp.ones((2, 6, 8)), jnp.ones((2, 4, 16, 8))
    with pytest.raises(ValueError, match="do not match"):
        decode_attention(q, kv, kv, jnp.zeros(2, jnp.int32), 3)  # 6 heads over 4 kv heads
    with pytest.raises(ValueError, match="float32 only"):
        decode_attention(jnp.ones((2, 4, 8), jnp.bfloat16), kv, kv, jnp.zeros(2, jnp.int32), 3)
