"""The Grain training loader: tokenized documents -> packed, shifted, per-process batches.

Pipeline (every stage is Grain's, so the iterator state is Grain's and checkpoints
with ``grain.checkpoint.CheckpointSave`` inside Orbax)::

    tfds data source (ArrayRecord) -> MapDataset.source
      -> global shuffle (data.seed; reshuffled each epoch) -> repeat (data.num_epochs, 0 = forever)
      -> this process's slice [process_index::process_count]
      -> split each document into rows of seq_len + 1 tokens overlapping by one, shifted
         into inputs t[0:n-1] and targets t[1:n] (a long document loses no prediction)
      -> first-fit packing into rows of seq_len (segment ids and positions kept)
      -> batches of global_batch_size // process_count rows -> thread prefetch

Every process shuffles identically and keeps every ``process_count``-th document, so
the processes together read exactly what one process would, without duplicates.
Positions restart at 0 in each row chunk of a long document.

A batch is a dict of int32 numpy arrays of shape ``(local_batch, seq_len)``:

- ``inputs``: token ids fed to the model (``<pad>`` where unused)
- ``targets``: the next token of the same document for each input position
- ``segment_ids``: 1, 2, ... for the documents packed in a row, 0 for padding
- ``positions``: 0-based position within the segment (0 on padding)

Loss and attention must use ``segment_ids``: padding has id 0, and a position only
attends within its own segment. With a finite ``num_epochs`` the last batch is padded
with empty rows (segment id 0) to keep shapes static; no token is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from snowjax.config import ConfigError, DataConfig
from snowjax.data.shards import open_token_source
from snowjax.data.tokenizer import PAD_ID

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
_FIELDS = ("inputs", "targets", "segment_ids", "positions")


def split_into_rows(tokens: np.ndarray, seq_len: int) -> list[dict[str, np.ndarray]]:
    """Shift a document into next-token pairs, cut into pieces of at most ``seq_len``.

    A document ``t[0..n-1]`` is read as chunks ``t[k*L : k*L + L + 1]`` (``L =
    seq_len``) that overlap by one token, each giving ``inputs = chunk[:-1]`` and
    ``targets = chunk[1:]``. All ``n - 1`` predictions are kept; a one-token document
    has none and yields nothing.

    Returns:
      ``[{"inputs": int32 (m,), "targets": int32 (m,)}, ...]`` with ``1 <= m <= seq_len``.
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    rows = []
    for start in range(0, len(tokens) - 1, seq_len):
        chunk = tokens[start : start + seq_len + 1]
        rows.append({"inputs": chunk[:-1], "targets": chunk[1:]})
    return rows


class _ShiftIntoRows(grain.experimental.FlatMapTransform):
    """Grain flat-map wrapper of :func:`split_into_rows` on an example's ``tokens``."""

    max_fan_out = 2**31 - 1  # only bounds MapDataset flat maps; this one runs on an IterDataset

    def __init__(self, seq_len: int):
        self.seq_len = seq_len

    def flat_map(self, element: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        return split_into_rows(element["tokens"], self.seq_len)


def _tokens_only(example: dict[str, Any]) -> dict[str, np.ndarray]:
    """Drop the text features, which packing does not carry."""
    return {"tokens": example["tokens"]}


def _rename_packed(row: dict[str, np.ndarray]) -> Batch:
    """Grain names packing metadata per feature; inputs and targets share it."""
    return {
        "inputs": row["inputs"],
        "targets": row["targets"],
        "segment_ids": row["inputs_segment_ids"],
        "positions": row["inputs_positions"],
    }


class _PadRows(grain.transforms.Map):
    """Pad a short final batch with empty rows (segment id 0) up to ``rows``."""

    def __init__(self, rows: int):
        self.rows = rows

    def map(self, batch: Batch) -> Batch:
        missing = self.rows - batch["inputs"].shape[0]
        if missing == 0:
            return batch
        fill = {"inputs": PAD_ID, "targets": PAD_ID, "segment_ids": 0, "positions": 0}
        return {
            k: np.concatenate([v, np.full((missing, *v.shape[1:]), fill[k], dtype=v.dtype)]) for k, v in batch.items()
        }


def _open_split(cfg: DataConfig, split: str) -> Sequence[dict[str, Any]]:
    if not cfg.path:
        raise FileNotFoundError("data.path is empty: set it to a dataset directory written by snowjax.data")
    try:
        source = open_token_source(cfg.path, split)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"data.path={cfg.path!r}: {e}") from e
    except KeyError as e:
        raise ConfigError(f"data.split: {e.args[0]} (data.path={cfg.path!r})") from e
    if len(source) == 0:
        raise ValueError(f"data.path={cfg.path!r}: split {split!r} has no examples")
    return source


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ConfigError(
            f"train.global_batch_size: {global_batch_size} is not a positive multiple of the "
            f"process count {process_count}"
        )
    return global_batch_size // process_count


def build_packed_dataset(
    cfg: DataConfig,
    *,
    split: str,
    seq_len: int,
    global_batch_size: int,
    shuffle: bool,
    num_epochs: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """The loader pipeline as a Grain ``IterDataset`` (see the module docstring).

    ``num_epochs`` 0 repeats forever. ``cfg.split`` and ``cfg.num_epochs`` are ignored
    in favour of the arguments; every other :class:`DataConfig` field applies.
    """
    if seq_len < 1:
        raise ConfigError(f"train.seq_len: must be >= 1, got {seq_len}")
    for key in ("num_epochs", "read_threads", "prefetch", "packing_bins"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"data.{key}: must be >= 0, got {getattr(cfg, key)}")
    if num_epochs < 0:
        raise ConfigError(f"data.num_epochs: must be >= 0, got {num_epochs}")
    local_batch = _local_batch_size(global_batch_size, process_index, process_count)
    source = _open_split(cfg, split)

    docs = grain.MapDataset.source(source)
    if shuffle:
        docs = docs.shuffle(seed=cfg.seed)  # reshuffles per epoch once repeated (reseed_each_epoch)
    docs = docs.repeat(num_epochs or None)
    docs = docs[process_index::process_count]
    docs = docs.map(_tokens_only)

    rows = docs.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads))
    # Long documents must be cut before packing: the packer rejects anything over a row.
    rows = grain.experimental.FlatMapIterDataset(rows, _ShiftIntoRows(seq_len))
    rows = grain.experimental.FirstFitPackIterDataset(
        rows,
        length_struct={"inputs": seq_len, "targets": seq_len},
        num_packing_bins=cfg.packing_bins or local_batch,
        seed=cfg.seed,
        shuffle_bins=shuffle,
        padding_struct={"inputs": PAD_ID, "targets": PAD_ID},
    )
    rows = rows.map(_rename_packed)
    batches = rows.batch(local_batch, drop_remainder=False).map(_PadRows(local_batch))
    if cfg.prefetch:
        batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=cfg.prefetch)
    log.info(
        "loader: %s split %r, %d documents, rows of %d tokens, %d rows per process batch (process %d of %d)",
        cfg.path,
        split,
        len(source),
        seq_len,
        local_batch,
        process_index,
        process_count,
    )
    return batches


def make_train_iterator(
    cfg: DataConfig,
    *,
    seq_len: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """Training batches from ``cfg.split``: shuffled, ``cfg.num_epochs`` epochs (0: forever).

    Yields dicts of int32 arrays of shape ``(global_batch_size // process_count,
    seq_len)`` (see the module docstring). Same config, same batches. The iterator
    has ``get_state()`` / ``set_state()`` and checkpoints with
    ``grain.checkpoint.CheckpointSave(it)`` / ``CheckpointRestore(it)``.

    Raises:
      FileNotFoundError: no dataset at ``cfg.path`` (the message names ``data.path``).
      ConfigError: no such split, or ``global_batch_size`` not divisible by ``process_count``.
    """
    ds = build_packed_dataset(
        cfg,
        split=cfg.split,
        seq_len=seq_len,
        global_batch_size=global_batch_size,
        shuffle=True,
        num_epochs=cfg.num_epochs,
        process_index=process_index,
        process_count=process_count,
    )
    return iter(ds)


def make_eval_iterator(
    cfg: DataConfig,
    *,
    seq_len: int,
    global_batch_size: int,
    split: str = "validation",
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """One unshuffled pass over ``split``, packed like training batches; the last batch is padded."""
    ds = build_packed_dataset(
        cfg,
        split=split,
        seq_len=seq_len,
        global_batch_size=global_batch_size,
        shuffle=False,
        num_epochs=1,
        process_index=process_index,
        process_count=process_count,
    )
    return iter(ds)
