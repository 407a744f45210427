"""The quality annotator: a linear or small-MLP head on frozen BERT window embeddings.

Training (:func:`train_head`) sees one example per window, labelled with its file's label
(1: high quality, 0: not); the held-out evaluation scores files the way scoring does: a
file's score is the mean of the head's probability over its windows (top, middle, bottom).
The head is saved as ``head.safetensors`` + ``head.json`` (its config, the encoder it was
trained on, and its held-out ROC-AUC).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from snowjax.quality.config import HeadConfig
from snowjax.quality.encoder import TextEncoder

log = logging.getLogger(__name__)

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"


class Head(nnx.Module):
    """Embeddings (N, E) -> logits (N,): ``x @ w + b``, or one ReLU hidden layer first (``mlp``)."""

    def __init__(self, dim: int, kind: str, hidden: int, rngs: nnx.Rngs):
        self.kind = kind
        if kind == "mlp":
            self.hidden = nnx.Linear(dim, hidden, rngs=rngs)
            self.out = nnx.Linear(hidden, 1, rngs=rngs)
        elif kind == "linear":
            self.out = nnx.Linear(dim, 1, rngs=rngs)
        else:
            raise ValueError(f"head kind {kind!r} is not linear or mlp")

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "mlp":
            x = jax.nn.relu(self.hidden(x))
        return self.out(x)[:, 0]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties count half.

    Computed from average ranks (Mann-Whitney U). NaN when a class is absent.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # average 1-based ranks over runs of equal scores
    bounds = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold, from (0, 0) to (1, 1), for plotting."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    tp = np.cumsum(labels[order])
    fp = np.cumsum(~labels[order])
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def file_scores(window_probs: np.ndarray, owner: np.ndarray, num_files: int) -> np.ndarray:
    """Mean window probability per file (num_files,) float32; NaN for a file with no window."""
    sums = np.bincount(owner, weights=window_probs, minlength=num_files)
    counts = np.bincount(owner, minlength=num_files)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).astype(np.float32)


@dataclasses.dataclass
class TrainedHead:
    """A head, its config, and how it did on held-out files."""

    head: Head
    cfg: HeadConfig
    dim: int
    metrics: dict[str, Any]

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """P(high quality) per embedding row (N,) float32."""
        if len(embeddings) == 0:
            return np.zeros((0,), np.float32)
        return np.asarray(jax.nn.sigmoid(_logits(self.head, jnp.asarray(embeddings))), np.float32)

    def save(self, out_dir: str | Path, encoder_info: dict[str, Any] | None = None, **extra: Any) -> Path:
        """Write ``head.safetensors`` + ``head.json`` (config, dim, metrics, encoder, ``extra``) under ``out_dir``."""
        from safetensors.numpy import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        flat = {".".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(self.head))}
        save_file(flat, str(out_dir / HEAD_WEIGHTS))
        info = {"head": dataclasses.asdict(self.cfg), "dim": self.dim, "metrics": self.metrics}
        info["encoder"] = encoder_info or {}
        info.update(extra)
        (out_dir / HEAD_CONFIG).write_text(json.dumps(info, indent=2) + "\n")
        return out_dir


@nnx.jit
def _logits(head: Head, x: jax.Array) -> jax.Array:
    return head(x)


def load_head(path: str | Path) -> tuple[TrainedHead, dict[str, Any]]:
    """A head saved by :meth:`TrainedHead.save`, and the info in its ``head.json``."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not (path / HEAD_CONFIG).is_file() or not (path / HEAD_WEIGHTS).is_file():
        raise FileNotFoundError(f"no {HEAD_CONFIG} + {HEAD_WEIGHTS} in {path}")
    info = json.loads((path / HEAD_CONFIG).read_text())
    cfg = HeadConfig(**info["head"])
    head = Head(info["dim"], cfg.kind, cfg.hidden, nnx.Rngs(0))
    weights = load_file(str(path / HEAD_WEIGHTS))
    state = nnx.state(head)
    flat = []
    for key, var in nnx.to_flat_state(state):
        name = ".".join(map(str, key))
        if name not in weights or weights[name].shape != var.shape:
            raise ValueError(f"{path / HEAD_WEIGHTS}: weight {name} is missing or has the wrong shape")
        flat.append((key, var.replace(jnp.asarray(weights[name]))))
    nnx.update(head, nnx.from_flat_state(flat))
    return TrainedHead(head, cfg, info["dim"], info.get("metrics", {})), info


def split_files(num_files: int, held_out: float, seed: int, labels: np.ndarray) -> np.ndarray:
    """Boolean mask (num_files,): True for held-out files, a stratified seeded share of each class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(num_files, bool)
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        k = min(max(1, round(len(idx) * held_out)), len(idx) - 1) if len(idx) > 1 else 0
        mask[idx[:k]] = True
    return mask


def train_head(
    embeddings: np.ndarray,
    owner: np.ndarray,
    labels: np.ndarray,
    cfg: HeadConfig,
    held_out: float = 0.2,
    split_seed: int = 0,
) -> tuple[TrainedHead, dict[str, np.ndarray]]:
    """Train a head on window embeddings of labelled files; evaluate on held-out files.

    Args:
      embeddings: (W, E) window embeddings.
      owner: (W,) the file index of each window.
      labels: (F,) 0/1 per file.
      cfg: head shape and optimisation.
      held_out: share of files (per class) kept for evaluation.

    Returns:
      The trained head (metrics: held-out file-level ROC-AUC, accuracy at 0.5, counts) and
      the held-out file scores and labels (``{"scores", "labels"}``) for plots.
    """
    labels = np.asarray(labels, np.int32)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"labels need both classes, got {np.bincount(labels, minlength=2).tolist()} (neg, pos)")
    test_files = split_files(len(labels), held_out, split_seed, labels)
    train_w = ~test_files[owner]
    x = jnp.asarray(embeddings[train_w])
    y = jnp.asarray(labels[owner[train_w]], jnp.float32)
    # Balance the classes: each class carries half the loss whatever the counts.
    pos = float(y.sum())
    w = jnp.where(y > 0, 0.5 / max(pos, 1.0), 0.5 / max(len(y) - pos, 1.0)) * len(y)

    head = Head(embeddings.shape[1], cfg.kind, cfg.hidden, nnx.Rngs(cfg.seed))
    opt = nnx.Optimizer(head, optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay), wrt=nnx.Param)

    @nnx.jit
    def step(head: Head, opt: nnx.Optimizer, xb: jax.Array, yb: jax.Array, wb: jax.Array) -> jax.Array:
        def loss_fn(h: Head) -> jax.Array:
            return jnp.mean(wb * optax.sigmoid_binary_cross_entropy(h(xb), yb))

        loss, grads = nnx.value_and_grad(loss_fn)(head)
        opt.update(head, grads)
        return loss

    rng = np.random.default_rng(cfg.seed)
    bs = cfg.batch_size or len(y)
    loss = jnp.nan
    for _ in range(cfg.steps):
        idx = rng.choice(len(y), size=bs, replace=False) if bs < len(y) else np.arange(len(y))
        loss = step(head, opt, x[idx], y[idx], w[idx])
    trained = TrainedHead(head, cfg, int(embeddings.shape[1]), {})
    probs = trained.probabilities(embeddings)
    scores = file_scores(probs, owner, len(labels))
    test_scores, test_labels = scores[test_files], labels[test_files]
    trained.metrics = {
        "held_out_roc_auc": roc_auc(test_scores, test_labels),
        "train_roc_auc": roc_auc(scores[~test_files], labels[~test_files]),
        "held_out_accuracy": float(np.mean((test_scores > 0.5) == (test_labels > 0))),
        "final_train_loss": float(loss),
        "num_train_files": int((~test_files).sum()),
        "num_held_out_files": int(test_files.sum()),
        "num_train_windows": int(train_w.sum()),
        "positives": int(labels.sum()),
        "negatives": int(len(labels) - labels.sum()),
    }
    log.info(
        "head trained: held-out ROC-AUC %.4f on %d files (train %.4f)",
        trained.metrics["held_out_roc_auc"],
        trained.metrics["num_held_out_files"],
        trained.metrics["train_roc_auc"],
    )
    return trained, {"scores": test_scores, "labels": test_labels}


class Annotator:
    """Encoder + head: texts in, one quality score per text out (mean over its windows)."""

    def __init__(self, encoder: TextEncoder, head: TrainedHead):
        if head.dim != encoder.dim:
            raise ValueError(f"head expects {head.dim}-d embeddings, the encoder gives {encoder.dim}")
        self.encoder, self.head = encoder, head

    def score_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (N,) float32 in [0, 1], windows (N,) int32)``; NaN score for a text with no token."""
        emb, owner = self.encoder.embed_texts(texts)
        scores = file_scores(self.head.probabilities(emb), owner, len(texts))
        return scores, np.bincount(owner, minlength=len(texts)).astype(np.int32)
