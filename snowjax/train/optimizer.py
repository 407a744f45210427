"""AdamW with global-norm clipping, and the weight-decay mask.

Weight decay is applied to matrices (attention/MLP kernels, the token
embedding) and skipped for norm scales, biases and any other parameter with
fewer than 2 dimensions. Stacked (``scan_layers``) norm scales are 2-D, so the
parameter's path is checked too: a path component containing ``norm`` or
``bias`` is never decayed.

Gradient accumulation happens in the train step (microbatch gradients are
averaged before ``update``), so the transformation here sees one gradient per
optimizer step. The trainer builds it with ``learning_rate=1.0`` and multiplies
the updates by the schedule at the *global* step it keeps itself (exact for
AdamW, whose decoupled decay is scaled by the LR too): a phase that resets the
optimizer state would otherwise restart optax's internal count, and with it the
schedule.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import optax

from snowjax.config import OptimizerConfig

NO_DECAY_NAME_PARTS = ("norm", "bias")


def _key_name(key: Any) -> str:
    """The name of one pytree path entry (dict key, attribute, or sequence index), lower-cased."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr)).lower()
    return str(key).lower()


def _ndim(leaf: Any) -> int:
    """Number of dimensions of an array-like leaf (arrays, ``ShapeDtypeStruct``, scalars)."""
    shape = getattr(leaf, "shape", None)
    return len(shape) if shape is not None else 0


def is_decayed(path: tuple[Any, ...], leaf: Any) -> bool:
    """Whether the parameter at ``path`` gets weight decay: ndim >= 2 and no norm/bias in its path."""
    if _ndim(leaf) < 2:
        return False
    names = [_key_name(k) for k in path]
    return not any(part in name for name in names for part in NO_DECAY_NAME_PARTS)


def decay_mask(params: Any) -> Any:
    """Pytree of bools with the structure of ``params``: True where weight decay applies.

    ``params`` may be an ``nnx.State`` (leaves reached through ``.value``), a nested dict,
    or a tree of ``jax.ShapeDtypeStruct`` (only shapes and paths are read).
    """
    return jax.tree_util.tree_map_with_path(is_decayed, params)


def count_params(params: Any) -> int:
    """Total number of scalar parameters (elements) over all array leaves of ``params``."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params) if hasattr(leaf, "shape"))


def make_optimizer(cfg: OptimizerConfig, schedule: optax.Schedule | float) -> optax.GradientTransformation:
    """Global-norm clipping (if ``cfg.grad_clip > 0``) followed by AdamW.

    Args:
      cfg: betas, eps, decoupled weight-decay coefficient (multiplied by the LR, as in
        ``optax.adamw``) and the clipping threshold (L2 norm over all gradients).
      schedule: LR as a function of optax's own update count (see :mod:`snowjax.train.schedules`),
        or a constant (1.0 when the caller scales updates by a global-step schedule).

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params`` (for weight decay).
    """
    adamw = optax.adamw(
        learning_rate=schedule,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw
