"""KV-cache generation: equal to full recomputation, left padding, sampling, stop sequences."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from snowjax.config import ModelConfig
from snowjax.data.tokenizer import EOS_ID
from snowjax.generate import Generator, SamplingConfig, greedy_by_recompute, left_pad, sample_token
from snowjax.model.decoder import Decoder

CFG = ModelConfig(
    vocab_size=97,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    ffn_size=64,
    max_seq_len=128,
    dtype="float32",
    param_dtype="float32",
    init_std=0.2,  # a peaked random model: greedy choices are far from ties
)
PROMPTS = [[5, 17, 33], [9], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [3, 3, 3, 3, 3]]


def _model(cfg: ModelConfig) -> tuple[Decoder, Generator]:
    model = Decoder(cfg, nnx.Rngs(params=0))
    _, params = nnx.split(model)
    return model, Generator(cfg, params, pad_multiple=8)


@pytest.mark.parametrize(
    "scan_layers,tied", [(True, True), (False, True), (False, False)], ids=["scan", "unrolled", "untied"]
)
def test_kv_cache_greedy_equals_full_recomputation(scan_layers: bool, tied: bool) -> None:
    cfg = dataclasses.replace(CFG, scan_layers=scan_layers, tie_embeddings=tied)
    model, gen = _model(cfg)
    n = 12
    got = gen.generate(PROMPTS, SamplingConfig(max_new_tokens=n))
    for prompt, g in zip(PROMPTS, got, strict=True):
        ref = greedy_by_recompute(model, prompt, n)
        if EOS_ID in ref:
            ref = ref[: ref.index(EOS_ID)]
        assert g.tokens == ref, (prompt, g.tokens, ref)
    # The same prompt alone or in a padded batch gives the same tokens.
    alone = gen.generate([PROMPTS[1]], SamplingConfig(max_new_tokens=n))[0]
    assert alone.tokens == got[1].tokens


@pytest.mark.parametrize(
    "scan_layers,reduce_attention,tied,kernel",
    [
        (True, True, True, True),
        (False, True, True, True),
        (False, False, True, True),
        (False, True, False, True),
        (False, True, True, False),
    ],
    ids=["scan", "unrolled", "matmul", "untied", "xla-dots"],
)
def test_cached_logits_equal_full_forward_logits(
    scan_layers: bool, reduce_attention: bool, tied: bool, kernel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jax.numpy as jnp

    from snowjax import generate
    from snowjax.generate import _forward_with_cache, inference_weights, init_cache

    # Small batches attend by multiply-reduce on CPU, larger ones by batched matmuls: test both.
    monkeypatch.setattr(generate, "_CPU_REDUCE_ATTENTION_MAX_ROW_HEADS", 10**6 if reduce_attention else 0)
    from snowjax.kernels import TILE, cpu_kernels_available

    if kernel and not cpu_kernels_available():
        pytest.skip("snowjax's CPU kernel does not build here (no C++ compiler)")
    if not kernel:  # the (in, out) layout and XLA's dots, as where the kernel does not build
        monkeypatch.setattr(generate, "cpu_kernels_available", lambda: False)
    cfg = dataclasses.replace(CFG, scan_layers=scan_layers, tie_embeddings=tied)
    model, _ = _model(cfg)
    tokens, pads = left_pad(PROMPTS, 16)
    cache = init_cache(cfg, len(PROMPTS), 24)
    logits, cache = _forward_with_cache(model, jnp.asarray(tokens), cache, jnp.asarray(pads), jnp.int32(0))
    nxt = jnp.asarray([[7], [8], [9], [10]], jnp.int32)
    # Decode steps on one CPU device read fused weights, in the kernel's column tiles where it builds
    # (float32) or (in, out); scanned layers keep the model's.
    weights = inference_weights(cfg, nnx.state(model, nnx.Param))
    assert (weights is None) == scan_layers
    if weights is not None:
        qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.resolved_head_dim
        e, v = cfg.hidden_size, cfg.vocab_size
        if kernel:
            assert weights["layers"][0]["qkv"].shape == (qkv // TILE, e, TILE)
            # a vocabulary that is no multiple of TILE (97 here) keeps its head (in, out) for XLA's dot
            assert weights["head"].shape == ((v // TILE, e, TILE) if v % TILE == 0 else (e, v))
        else:
            assert weights["layers"][0]["qkv"].shape == (e, qkv)
            assert weights["head"].shape == (e, v)
    steps = [weights] if weights is None else [weights, None]
    for w in steps:
        logits2, _ = _forward_with_cache(model, nxt, cache, jnp.asarray(pads), jnp.int32(16), w)
        for i, p in enumerate(PROMPTS):
            full = model(jnp.asarray([[*p, int(nxt[i, 0])]], jnp.int32))
            np.testing.assert_allclose(logits[i], full[0, -2], atol=1e-5)
            np.testing.assert_allclose(logits2[i], full[0, -1], atol=1e-5)


def test_sampling_is_seeded_and_top_p_narrows_to_greedy() -> None:
    _, gen = _model(CFG)
    s = SamplingConfig(max_new_tokens=10, temperature=1.0, seed=3)
    a, b = gen.generate(PROMPTS, s), gen.generate(PROMPTS, s)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    other = gen.generate(PROMPTS, dataclasses.replace(s, seed=4))
    assert [g.tokens for g in a] != [g.tokens for g in other]
    greedy = gen.generate(PROMPTS, SamplingConfig(max_new_tokens=10))
    tiny_p = gen.generate(PROMPTS, dataclasses.replace(s, top_p=1e-6))
    assert [g.tokens for g in tiny_p] == [g.tokens for g in greedy]


def test_top_p_keeps_the_nucleus_only() -> None:
    logits = jax.numpy.log(jax.numpy.asarray([[0.5, 0.3, 0.15, 0.05]]))
    draws = {int(sample_token(logits, jax.random.key(i), 1.0, 0.7)[0]) for i in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7; the tail is never drawn


def test_stop_sequences_cut_the_text_and_tokens() -> None:
    _, gen = _model(CFG)

    def decode_text(ids: list[int]) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)

    full = gen.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=12), decode_text)[0]
    stop = full.text[3:5]
    cut = gen.generate(PROMPTS[:1], SamplingConfig(max_new_tokens=12, stop_sequences=(stop,)), decode_text)[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    assert decode_text(cut.tokens) == cut.text
    with pytest.raises(ValueError, match="max_seq_len"):
        gen.generate([[1] * 100], SamplingConfig(max_new_tokens=64))


def test_generation_sharded_over_a_mesh_equals_one_device() -> None:
    """Params placed by the training shardings on a (2, 2, 2) mesh; the batch and cache shard over data axes."""
    from snowjax.config import MeshConfig
    from snowjax.parallel import make_mesh, state_shardings

    cfg = dataclasses.replace(CFG, vocab_size=96)  # divisible by the tensor axis
    _, gen = _model(cfg)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    with jax.set_mesh(mesh):
        sharded = jax.device_put(gen.params, state_shardings(gen.params, mesh))
    on_mesh = Generator(cfg, sharded, mesh=mesh, pad_multiple=8)
    s = SamplingConfig(max_new_tokens=8)
    assert [g.tokens for g in on_mesh.generate(PROMPTS, s)] == [g.tokens for g in gen.generate(PROMPTS, s)]
