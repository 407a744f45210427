"""Attention levers: the cuDNN packed layout describes the same documents as the mask; cudnn off-GPU falls back."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snowjax.model import attention
from snowjax.model.attention import attention_mask, multi_head_attention, packed_segments


def test_packed_segments_rebuild_the_causal_document_mask() -> None:
    seg = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1], [1, 2, 3, 4, 5, 0, 0, 0]], jnp.int32)
    lengths, offsets, most = packed_segments(seg, max_segments=4)
    np.testing.assert_array_equal(lengths, [[3, 2, 1, -1], [8, -1, -1, -1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(offsets, [[0, 3, 5, -1, -1], [0, -1, -1, -1, -1], [0, 1, 2, 3, -1]])
    assert int(most) == 5  # the third row has more documents than the layout holds: dense fallback
    # Within the layout's capacity, documents -> (causal within each) equals the packed mask.
    t = seg.shape[1]
    for row in range(2):
        rebuilt = np.zeros((t, t), bool)
        for n, start in zip(lengths[row], offsets[row], strict=False):
            if n > 0:
                rebuilt[start : start + n, start : start + n] = np.tril(np.ones((n, n), bool))
        real = np.asarray(seg[row]) != 0  # padding belongs to no document (its output is zeroed)
        expected = np.asarray(attention_mask(seg, seg)[row]) & real[:, None] & real[None, :]
        np.testing.assert_array_equal(rebuilt, expected)


def test_cudnn_off_gpu_logs_and_matches_the_xla_path(caplog: pytest.LogCaptureFixture) -> None:
    if jax.default_backend() == "gpu":
        pytest.skip("this checks the fallback on a machine without a GPU")
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (2, 16, 4, 8))
    k = jax.random.normal(kk, (2, 16, 2, 8))
    v = jax.random.normal(kv, (2, 16, 2, 8))
    seg = jnp.asarray([[1] * 10 + [2] * 6, [1] * 12 + [0] * 4], jnp.int32)
    mask = attention_mask(seg, seg)
    attention._warned_fallback = False
    with caplog.at_level(logging.WARNING, logger="snowjax.model.attention"):
        out = multi_head_attention(q, k, v, mask, "cudnn", segment_ids=seg)
    assert any("needs an NVIDIA GPU" in r.message for r in caplog.records)
    np.testing.assert_allclose(out, multi_head_attention(q, k, v, mask, "xla"), rtol=1e-6, atol=1e-6)
