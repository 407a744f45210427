"""Learning-rate schedules: values at the key points of every kind, shifting, and jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snowjax.config import ScheduleConfig
from snowjax.train.schedules import make_schedule

PEAK, FLOOR = 5.3e-4, 5.3e-5


def lr_at(cfg: ScheduleConfig, total: int, step: int) -> float:
    return float(make_schedule(cfg, total)(step))


def test_cosine_phase1_shape() -> None:
    # PAPER.md phase 1: 600 warmup steps, cosine 5.3e-4 -> 5.3e-5.
    cfg = ScheduleConfig(kind="cosine", init_lr=0.0, peak_lr=PEAK, end_lr=FLOOR, warmup_steps=600)
    total = 10_600  # 10_000 decay steps after warmup
    assert lr_at(cfg, total, 0) == 0.0
    assert lr_at(cfg, total, 300) == pytest.approx(PEAK / 2, rel=1e-6)
    assert lr_at(cfg, total, 600) == pytest.approx(PEAK, rel=1e-6)
    assert lr_at(cfg, total, 5_600) == pytest.approx((PEAK + FLOOR) / 2, rel=1e-5)  # cosine midpoint
    assert lr_at(cfg, total, 3_100) == pytest.approx(FLOOR + (PEAK - FLOOR) * (1 + np.cos(np.pi / 4)) / 2, rel=1e-5)
    assert lr_at(cfg, total, 10_600) == pytest.approx(FLOOR, rel=1e-6)
    assert lr_at(cfg, total, 50_000) == pytest.approx(FLOOR, rel=1e-6)


def test_linear() -> None:
    cfg = ScheduleConfig(kind="linear", init_lr=1e-5, peak_lr=1e-3, end_lr=0.0, warmup_steps=100)
    assert lr_at(cfg, 1100, 0) == pytest.approx(1e-5)
    assert lr_at(cfg, 1100, 50) == pytest.approx((1e-5 + 1e-3) / 2)
    assert lr_at(cfg, 1100, 100) == pytest.approx(1e-3)
    assert lr_at(cfg, 1100, 600) == pytest.approx(5e-4)
    assert lr_at(cfg, 1100, 1100) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(cfg, 1100, 5000) == pytest.approx(0.0, abs=1e-12)


def test_constant() -> None:
    cfg = ScheduleConfig(kind="constant", init_lr=0.0, peak_lr=2e-4, end_lr=0.0, warmup_steps=10)
    assert lr_at(cfg, 100, 0) == 0.0
    assert lr_at(cfg, 100, 5) == pytest.approx(1e-4)
    assert lr_at(cfg, 100, 10) == pytest.approx(2e-4)
    assert lr_at(cfg, 100, 100) == pytest.approx(2e-4)
    assert lr_at(cfg, 100, 10_000) == pytest.approx(2e-4)


def test_wsd() -> None:
    cfg = ScheduleConfig(kind="wsd", init_lr=0.0, peak_lr=1e-3, end_lr=1e-4, warmup_steps=100, decay_fraction=0.2)
    assert lr_at(cfg, 1000, 0) == 0.0
    assert lr_at(cfg, 1000, 100) == pytest.approx(1e-3)
    assert lr_at(cfg, 1000, 500) == pytest.approx(1e-3)  # stable
    assert lr_at(cfg, 1000, 800) == pytest.approx(1e-3)  # decay starts at 1000 - 0.2 * 1000
    assert lr_at(cfg, 1000, 900) == pytest.approx(5.5e-4)
    assert lr_at(cfg, 1000, 1000) == pytest.approx(1e-4)
    assert lr_at(cfg, 1000, 2000) == pytest.approx(1e-4)


def test_zero_warmup_starts_at_peak() -> None:
    cfg = ScheduleConfig(kind="linear", init_lr=0.0, peak_lr=1e-3, end_lr=0.0, warmup_steps=0)
    assert lr_at(cfg, 10, 0) == pytest.approx(1e-3)
    assert lr_at(cfg, 10, 5) == pytest.approx(5e-4)


def test_cfg_total_steps_overrides_argument() -> None:
    cfg = ScheduleConfig(kind="linear", init_lr=0.0, peak_lr=1e-3, end_lr=0.0, warmup_steps=0, total_steps=100)
    assert lr_at(cfg, 10_000, 50) == pytest.approx(5e-4)  # 100-step schedule, argument ignored
    cfg.total_steps = 0
    assert lr_at(cfg, 200, 50) == pytest.approx(7.5e-4)  # argument used


def test_start_step_shifts_everything() -> None:
    base = ScheduleConfig(kind="cosine", init_lr=1e-5, peak_lr=PEAK, end_lr=FLOOR, warmup_steps=600, total_steps=10_600)
    shifted = ScheduleConfig(**{**base.__dict__, "start_step": 3_000})
    assert lr_at(shifted, 0, 0) == pytest.approx(1e-5)  # before start: init_lr
    assert lr_at(shifted, 0, 2_999) == pytest.approx(1e-5)
    for s in (0, 300, 600, 5_600, 10_600, 20_000):
        assert lr_at(shifted, 0, 3_000 + s) == pytest.approx(lr_at(base, 0, s), rel=1e-5)


def test_phase2_rewarmup_shape() -> None:
    # PAPER.md phase 2: re-warmup 0 -> 5.3e-4 over 1000 steps, then linear decay to 0.
    start, length = 12_000, 6_000
    cfg = ScheduleConfig(
        kind="linear", init_lr=0.0, peak_lr=PEAK, end_lr=0.0, warmup_steps=1000, start_step=start, total_steps=length
    )
    sched = make_schedule(cfg, 999_999)
    assert float(sched(start - 1)) == 0.0
    assert float(sched(start)) == 0.0
    assert float(sched(start + 500)) == pytest.approx(PEAK / 2, rel=1e-6)
    assert float(sched(start + 1000)) == pytest.approx(PEAK, rel=1e-6)
    assert float(sched(start + 3500)) == pytest.approx(PEAK / 2, rel=1e-5)
    assert float(sched(start + length)) == pytest.approx(0.0, abs=1e-12)
    assert float(sched(start + length + 100)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "wsd"])
def test_jit_matches_eager(kind: str) -> None:
    cfg = ScheduleConfig(kind=kind, init_lr=1e-6, peak_lr=1e-3, end_lr=1e-4, warmup_steps=50, start_step=20)
    sched = make_schedule(cfg, 500)
    steps = jnp.arange(0, 700, 7, dtype=jnp.int32)
    jitted = jax.jit(jax.vmap(sched))(steps)
    eager = np.array([float(sched(int(s))) for s in steps])
    np.testing.assert_allclose(np.asarray(jitted), eager, rtol=1e-6)
    assert jitted.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(jitted)))


def test_unknown_kind_rejected() -> None:
    cfg = ScheduleConfig()
    cfg.kind = "exponential"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="kind"):
        make_schedule(cfg, 100)
