"""Scoring at scale: stream file records, score them, write scores beside ids, resume after a stop.

Every input shard ``files/<name>.parquet`` (or ``.jsonl``) gets one output
``scores/part-NNNNN.parquet`` with one row per input record, in input order:

==========  =======  ==========================================================
column      type     meaning
==========  =======  ==========================================================
id          string   the record's ``id``
language    string   the record's ``language`` ("unknown" when absent)
num_tokens  int64    the record's ``num_tokens`` (dataset tokenizer; -1 when absent)
score       float32  mean head probability over the file's windows; NaN if skipped
windows     int32    windows scored (1 to 3; 0 if skipped)
skip        string   "" when scored, else why: missing, empty, invalid_utf8
==========  =======  ==========================================================

Each output is written to a temporary name and renamed into place, so a part file
exists only when its shard is complete; a restarted run skips shards whose part file
is there (and names the same input), and scores the rest the same way (batches are
formed within a shard, so they are identical). Huge files are scored from slices
(:class:`snowjax.quality.encoder.TextEncoder`) and counted as ``huge``.

:mod:`snowjax.quality.beam` runs the same per-record scoring as a Beam step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from snowjax.quality.annotator import Annotator
from snowjax.quality.records import clean_content, iter_record_batches

log = logging.getLogger(__name__)

SCORES_DIRNAME = "scores"
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("language", pa.string()),
        ("num_tokens", pa.int64()),
        ("score", pa.float32()),
        ("windows", pa.int32()),
        ("skip", pa.string()),
    ]
)
_META_KEY = b"snowjax_scoring"


def part_path(scores_dir: Path, shard: int) -> Path:
    return scores_dir / f"part-{shard:05d}.parquet"


def score_records(annotator: Annotator, records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], Counter]:
    """Score a batch of records: one output row (the columns above) per record, and counts by outcome.

    Records without usable content are kept with ``score`` NaN and the reason in ``skip``;
    a record the tokenizer cannot encode is retried alone and skipped as ``invalid_utf8``.
    """
    counts: Counter = Counter()
    rows, texts, where = [], [], []
    for rec in records:
        text, reason = clean_content(rec.get("content"))
        num_tokens = rec.get("num_tokens")
        rid = rec.get("id") or hashlib.sha1((text or "").encode()).hexdigest()
        rows.append(
            {
                "id": str(rid),
                "language": str(rec.get("language") or "unknown"),
                "num_tokens": int(num_tokens) if num_tokens is not None else -1,
                "score": float("nan"),
                "windows": 0,
                "skip": reason,
            }
        )
        if text is None:
            counts[reason] += 1
            continue
        if len(text) > annotator.encoder.cfg.max_chars:
            counts["huge"] += 1
        texts.append(text)
        where.append(len(rows) - 1)
    try:
        scores, windows = annotator.score_texts(texts)
    except Exception:  # one bad text should not cost the batch: find it
        scores, windows = np.full(len(texts), np.nan, np.float32), np.zeros(len(texts), np.int32)
        for j, text in enumerate(texts):
            try:
                s, w = annotator.score_texts([text])
                scores[j], windows[j] = s[0], w[0]
            except Exception as e:
                log.warning("record %s cannot be encoded (%s): skipped", rows[where[j]]["id"], e)
                rows[where[j]]["skip"] = "invalid_utf8"
                counts["invalid_utf8"] += 1
    for j, i in enumerate(where):
        if rows[i]["skip"]:
            continue
        if windows[j] == 0:  # text of whitespace the tokenizer drops entirely
            rows[i]["skip"] = "empty"
            counts["empty"] += 1
            continue
        rows[i]["score"], rows[i]["windows"] = float(scores[j]), int(windows[j])
        counts["scored"] += 1
    return rows, counts


@dataclass
class ScoringSummary:
    """What a scoring run did. ``counts``: records by outcome (scored, empty, huge, ...), all shards."""

    parts: list[Path] = field(default_factory=list)
    scored_shards: list[int] = field(default_factory=list)  # scored in this run
    resumed_shards: list[int] = field(default_factory=list)  # found complete, not recomputed
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _read_part_meta(path: Path) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(_META_KEY, b"{}"))


def _write_part(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata({_META_KEY: json.dumps(meta)})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # atomic: the part appears complete or not at all


PROGRESS_SECONDS = 15.0  # between progress lines within a shard


def score_shards(
    annotator: Annotator,
    input_files: Sequence[Path],
    out_dir: str | Path,
    *,
    batch_rows: int = 256,
    on_shard_done: Callable[[int, Path], None] | None = None,
) -> ScoringSummary:
    """Score every record of ``input_files`` into ``out_dir/scores/part-NNNNN.parquet`` (one per input file).

    Args:
      annotator: encoder + head.
      input_files: the input shards, in a fixed order (part ``i`` belongs to file ``i``).
      out_dir: where ``scores/`` goes.
      batch_rows: records read and scored at a time.
      on_shard_done: called after each part is written (progress hooks; tests interrupt here).

    Raises:
      ValueError: an existing part file belongs to another input file (a different input
        list in the same ``out_dir``).
    """
    scores_dir = Path(out_dir) / SCORES_DIRNAME
    scores_dir.mkdir(parents=True, exist_ok=True)
    summary = ScoringSummary()
    total: Counter = Counter()
    t0 = time.perf_counter()
    for shard, src in enumerate(input_files):
        dst = part_path(scores_dir, shard)
        summary.parts.append(dst)
        if dst.exists():
            meta = _read_part_meta(dst)
            if meta.get("input") != src.name:
                raise ValueError(
                    f"{dst} holds scores of {meta.get('input')!r}, not of {src.name!r}: use another out_dir"
                )
            total.update(meta.get("counts", {}))
            summary.resumed_shards.append(shard)
            continue
        start, rows, counts = time.perf_counter(), [], Counter()
        last_log = start
        for batch in iter_record_batches(
            src, columns=["id", "content", "language", "num_tokens"], batch_rows=batch_rows
        ):
            batch_out, batch_counts = score_records(annotator, batch)
            rows.extend(batch_out)
            counts.update(batch_counts)
            if time.perf_counter() - last_log >= PROGRESS_SECONDS:
                last_log = time.perf_counter()
                log.info("scoring shard %d/%d: %d records so far", shard + 1, len(input_files), len(rows))
        _write_part(dst, rows, {"input": src.name, "counts": dict(counts)})
        total.update(counts)
        summary.scored_shards.append(shard)
        tokens = sum(max(r["num_tokens"], 0) for r in rows)
        dt = time.perf_counter() - start
        log.info(
            "scored shard %d/%d (%s): %d records in %.1fs (%.0f tokens/s) %s",
            shard + 1,
            len(input_files),
            src.name,
            len(rows),
            dt,
            tokens / max(dt, 1e-9),
            dict(counts),
        )
        if on_shard_done is not None:
            on_shard_done(shard, dst)
    if summary.resumed_shards:
        log.info("resumed: %d shards were already scored and were not recomputed", len(summary.resumed_shards))
    summary.counts = dict(total)
    summary.seconds = time.perf_counter() - t0
    return summary


def read_scores(parts: Sequence[Path]) -> dict[str, np.ndarray]:
    """All part files as column arrays, plus ``shard`` and ``row`` (the record's position in its input file)."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in [*SCHEMA.names, "shard", "row"]}
    for shard, path in enumerate(parts):
        table = pq.read_table(path)
        for k in SCHEMA.names:
            cols[k].append(table.column(k).to_numpy(zero_copy_only=False))
        cols["shard"].append(np.full(table.num_rows, shard, np.int64))
        cols["row"].append(np.arange(table.num_rows, dtype=np.int64))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
