"""Learning-rate schedules as functions of the *global* optimizer step.

Every schedule starts with a linear warmup from ``init_lr`` (at the schedule's
own step 0) to ``peak_lr`` (at its step ``warmup_steps``), then:

- ``cosine``: half-cosine from ``peak_lr`` to ``end_lr`` at step ``total``;
- ``linear``: straight line from ``peak_lr`` to ``end_lr`` at step ``total``;
- ``constant``: ``peak_lr`` forever (``end_lr`` is ignored);
- ``wsd`` (warmup-stable-decay): hold ``peak_lr``, then a straight line to
  ``end_lr`` over the last ``decay_fraction * total`` steps.

``total`` is ``cfg.total_steps`` or, when that is 0, the ``total_steps``
argument; it counts steps of this schedule, not global steps. ``cfg.start_step``
shifts the whole schedule so that global step ``start_step`` is its own step 0,
which is how a later curriculum phase re-warms (PAPER.md phase 2: 0 -> 5.3e-4
over 1000 steps, then linear to 0). Before ``start_step`` the LR is ``init_lr``;
after the end it holds ``end_lr`` (``peak_lr`` for ``constant``).

The returned callables use only ``jnp`` ops on the step, so they trace under
``jax.jit`` and work as an ``optax`` ``learning_rate``. LR values are in the
optimizer's units (per-step multiplier of the Adam update).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from snowjax.config import ScheduleConfig

KINDS = ("cosine", "linear", "constant", "wsd")


def resolve_total_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    """Length of the schedule in steps: ``cfg.total_steps`` or, when 0, ``total_steps``."""
    total = cfg.total_steps or total_steps
    if total < 0:
        raise ValueError(f"schedule total steps must be >= 0, got {total}")
    return total


def _warmup(s: jnp.ndarray, init_lr: float, peak_lr: float, warmup_steps: int) -> jnp.ndarray:
    """Linear ramp ``init_lr`` -> ``peak_lr`` over ``warmup_steps``; ``peak_lr`` once reached."""
    if warmup_steps <= 0:
        return jnp.full_like(s, peak_lr)
    frac = jnp.clip(s / warmup_steps, 0.0, 1.0)
    return init_lr + (peak_lr - init_lr) * frac


def _decay_fraction(s: jnp.ndarray, begin: float, end: float) -> jnp.ndarray:
    """Progress in [0, 1] of step ``s`` through the interval [begin, end] (1 when it is empty)."""
    span = end - begin
    if span <= 0:
        return jnp.where(s >= begin, 1.0, 0.0).astype(s.dtype)
    return jnp.clip((s - begin) / span, 0.0, 1.0)


def schedule_value(cfg: ScheduleConfig, total_steps: int, step: jnp.ndarray | int) -> jnp.ndarray:
    """LR (float32 scalar) at global ``step`` under ``cfg``; see the module docstring."""
    if cfg.kind not in KINDS:
        raise ValueError(f"schedule.kind: {cfg.kind!r} is not one of {list(KINDS)}")
    total = resolve_total_steps(cfg, total_steps)
    warmup = cfg.warmup_steps
    s = jnp.asarray(step, dtype=jnp.float32) - cfg.start_step  # the schedule's own step
    warm = _warmup(s, cfg.init_lr, cfg.peak_lr, warmup)

    if cfg.kind == "constant":
        after = jnp.full_like(s, cfg.peak_lr)
    elif cfg.kind == "cosine":
        frac = _decay_fraction(s, warmup, total)
        after = cfg.end_lr + (cfg.peak_lr - cfg.end_lr) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
    elif cfg.kind == "linear":
        frac = _decay_fraction(s, warmup, total)
        after = cfg.peak_lr + (cfg.end_lr - cfg.peak_lr) * frac
    else:  # wsd
        decay_begin = max(float(warmup), total - cfg.decay_fraction * total)
        frac = _decay_fraction(s, decay_begin, total)
        after = cfg.peak_lr + (cfg.end_lr - cfg.peak_lr) * frac

    lr = jnp.where(s < warmup, warm, after)
    return jnp.where(s < 0, jnp.float32(cfg.init_lr), lr).astype(jnp.float32)


def make_schedule(cfg: ScheduleConfig, total_steps: int) -> optax.Schedule:
    """An ``optax`` schedule ``global_step -> LR`` (jit-traceable).

    Args:
      cfg: the schedule section of the run config.
      total_steps: length of this schedule in optimizer steps, used when ``cfg.total_steps`` is 0
        (normally ``train.steps``).
    """
    resolve_total_steps(cfg, total_steps)  # fail at construction, not inside jit
    if cfg.kind not in KINDS:
        raise ValueError(f"schedule.kind: {cfg.kind!r} is not one of {list(KINDS)}")

    def schedule(step: jnp.ndarray | int) -> jnp.ndarray:
        return schedule_value(cfg, total_steps, step)

    return schedule
