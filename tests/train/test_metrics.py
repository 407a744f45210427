"""Metrics: FLOPs per token, device peaks, throughput/MFU, the JSONL/TensorBoard logger, matmul timing."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from snowjax.config import ModelConfig
from snowjax.train import metrics as M


def test_flops_per_token_1p3b_by_hand() -> None:
    cfg = ModelConfig()  # Arctic-SnowCoder-1.3B: 24 x 2048, FFN 5632, 16 heads, vocab 64000
    d, f, vocab, layers, seq = 2048, 5632, 64000, 24, 8192
    per_layer = 4 * d * d + 3 * d * f  # Q, K, V, O (no GQA) + SwiGLU gate/up/down
    assert per_layer == 51_380_224
    n_nonembedding = layers * per_layer
    assert n_nonembedding == 1_233_125_376
    head = vocab * d
    assert head == 131_072_000
    attention = 12 * layers * d * seq  # 3 x (2 matmuls x 2 FLOPs x seq x d) per layer
    assert attention == 4_831_838_208
    expected = 6 * n_nonembedding + 6 * head + attention
    assert expected == 13_017_022_464
    assert M.matmul_params(cfg) == n_nonembedding + head
    assert M.flops_per_token(cfg, seq) == pytest.approx(expected, rel=1e-12)
    # Shorter sequences only change the attention term.
    assert M.flops_per_token(cfg, 2048) == pytest.approx(6 * (n_nonembedding + head) + 12 * layers * d * 2048)


def test_flops_per_token_gqa_and_head_dim() -> None:
    full = ModelConfig()
    gqa = ModelConfig(num_kv_heads=4)  # K and V shrink from 2048 to 4 * 128 = 512 wide
    diff = 6 * 24 * 2 * 2048 * (2048 - 512)
    assert diff == 905_969_664
    assert M.flops_per_token(full, 8192) - M.flops_per_token(gqa, 8192) == pytest.approx(diff)
    wide = ModelConfig(
        hidden_size=64, num_heads=2, num_kv_heads=1, head_dim=48, ffn_size=96, vocab_size=100, num_layers=2
    )
    q, kv = 2 * 48, 1 * 48
    per_layer = 64 * q + 2 * 64 * kv + q * 64 + 3 * 64 * 96
    expected = 6 * (2 * per_layer + 100 * 64) + 3 * 2 * 2 * 2 * 128 * q
    assert M.flops_per_token(wide, 128) == pytest.approx(expected)


def test_tied_and_untied_head_cost_the_same() -> None:
    assert M.flops_per_token(ModelConfig(tie_embeddings=True), 1024) == M.flops_per_token(
        ModelConfig(tie_embeddings=False), 1024
    )


def test_model_flops_per_step() -> None:
    cfg = ModelConfig()
    tokens = 512 * 8192
    assert M.model_flops_per_step(cfg, 8192, tokens) == pytest.approx(13_017_022_464 * tokens)


@pytest.mark.parametrize(
    ("kind", "platform", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "gpu", 989e12),
        ("NVIDIA H200", "gpu", 989e12),
        ("NVIDIA A100-SXM4-80GB", "gpu", 312e12),
        ("TPU v4", "tpu", 275e12),
        ("TPU v5 lite", "tpu", 197e12),
        ("TPU v5e", "tpu", 197e12),
        ("TPU v5p", "tpu", 459e12),
        ("TPU v5", "tpu", 459e12),
        ("TPU v6 lite", "tpu", 918e12),
        ("NVIDIA GeForce GTX 1080", "gpu", None),
        ("cpu", "cpu", None),
    ],
)
def test_peak_flops_per_device(kind: str, platform: str, peak: float | None) -> None:
    assert M.peak_flops_per_device(SimpleNamespace(device_kind=kind, platform=platform)) == peak


def test_peak_flops_default_device_on_cpu() -> None:
    if jax.devices()[0].platform != "cpu":
        pytest.skip("CPU-only check")
    assert M.peak_flops_per_device() is None


def test_resolve_peak_flops(monkeypatch: pytest.MonkeyPatch) -> None:
    h100 = [SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3", platform="gpu", process_index=0)] * 8
    assert M.resolve_peak_flops(0.0, h100) == pytest.approx(8 * 989e12)
    assert M.resolve_peak_flops(1e12, h100) == pytest.approx(8e12)  # configured value wins
    monkeypatch.setattr(M, "measure_matmul_flops", lambda *a, **k: 5e10)
    cpus = [SimpleNamespace(device_kind="cpu", platform="cpu", process_index=i // 4) for i in range(8)]
    assert M.resolve_peak_flops(0.0, cpus) == pytest.approx(2 * 5e10)  # one measurement per process


def test_throughput() -> None:
    tp = M.Throughput(flops_per_token=1e9, peak_flops=1e12)
    assert tp.tokens_per_sec(1000, 2.0) == 500.0
    assert tp.mfu(1000, 2.0) == pytest.approx(0.5)
    out = tp(1000, 2.0)
    assert out == {"tokens_per_sec": 500.0, "model_flops_per_sec": 5e11, "mfu": pytest.approx(0.5)}
    unknown = M.Throughput(flops_per_token=1e9, peak_flops=None)
    assert unknown.mfu(1000, 2.0) is None
    assert "mfu" not in unknown(1000, 2.0)
    assert unknown.tokens_per_sec(10, 0.0) == 0.0


def test_measure_matmul_flops_small() -> None:
    flops = M.measure_matmul_flops(n=64, iters=2)
    assert math.isfinite(flops) and flops > 0
    with pytest.raises(ValueError):
        M.measure_matmul_flops(n=0)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_logger_jsonl_appends(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=M.__name__)
    with M.MetricsLogger(tmp_path, is_primary=True, tensorboard=True) as log:
        log.log(10, {"loss": jnp.float32(3.4123), "grad_norm": 0.912, "lr": 5.3e-4, "tokens_per_sec": 12_345.0})
        log.log(20, {"loss": float("nan"), "mfu": 0.412, "tokens": 4096})
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[0]["loss"] == pytest.approx(3.4123, rel=1e-6)
    assert rows[0]["grad_norm"] == 0.912 and rows[0]["lr"] == 5.3e-4
    assert rows[1]["loss"] is None  # NaN is written as null: strict JSON
    assert rows[1]["tokens"] == 4096 and isinstance(rows[1]["tokens"], int)
    assert all(isinstance(r["time"], float) for r in rows)
    assert "step 10 | loss 3.412 | gnorm 0.91 | lr 5.3e-04 | 12.3k tok/s" in caplog.text
    assert "MFU 41.2%" in caplog.text
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    with M.MetricsLogger(tmp_path, is_primary=True, tensorboard=False) as log:  # a resumed run
        log.log(30, {"loss": 2.5})
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [10, 20, 30]


def test_metrics_logger_non_primary_writes_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = M.MetricsLogger(run_dir, is_primary=False)
    log.log(1, {"loss": 1.0})
    log.close()
    assert not run_dir.exists()


def test_format_console_full_line() -> None:
    line = M.format_console(
        120, {"loss": 3.4123, "grad_norm": 0.912, "lr": 5.3e-4, "tokens_per_sec": 12_300.0, "mfu": 0.412}
    )
    assert line == "step 120 | loss 3.412 | gnorm 0.91 | lr 5.3e-04 | 12.3k tok/s | MFU 41.2%"
