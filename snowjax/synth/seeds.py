"""Seeds for synthesis: file records (``id``, ``content``, ``language``) from Parquet or JSONL.

``path`` may be a Parquet file, a JSONL file (``.jsonl``/``.json``, optionally ``.gz``), a
directory (its ``*.parquet`` files, else its ``*.jsonl``; a ``data prepare`` output directory
is read through its ``files/`` folder), or a glob. Parquet is streamed by record batch.

With a ``score`` column (the phase-2 annotator's), the ``max_seeds`` highest-scoring records
are used, in descending score (ties by id); the scan that picks them reads only ``id``,
``language`` and ``score``, and a second scan reads the chosen records' content, so memory
holds ``max_seeds`` records, not the corpus. Without one, the first ``max_seeds`` records
in file order. Records missing a field, or of a language not asked for, are skipped and counted.
"""

from __future__ import annotations

import glob as globlib
import heapq
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snowjax.config import ConfigError
from snowjax.quality.records import iter_record_batches

log = logging.getLogger(__name__)


@dataclass
class SeedsConfig:
    """Where seeds come from and how many."""

    path: str = ""  # Parquet/JSONL file, directory or glob of records (id, content, language[, score])
    max_seeds: int = 0  # top N by score (first N without one); 0: all
    languages: list[str] = field(default_factory=list)  # only these languages; empty: all
    min_chars: int = 1  # seeds with less content are skipped


@dataclass
class Seed:
    id: str
    language: str
    content: str
    score: float | None = None


def seed_files(path: str) -> list[Path]:
    """The record files ``path`` designates (see the module docstring)."""
    p = Path(path)
    if p.is_dir():
        if (p / "files").is_dir():  # a `snowjax data prepare` output directory
            p = p / "files"
        for pattern in ("*.parquet", "*.jsonl", "*.jsonl.gz", "*.json"):
            found = sorted(p.glob(pattern))
            if found:
                return found
        raise ConfigError(f"seeds.path: no .parquet or .jsonl files in {p}")
    if p.is_file():
        return [p]
    found = sorted(Path(f) for f in globlib.glob(path))
    if not found:
        raise ConfigError(f"seeds.path: nothing at {path}")
    return found


def _is_parquet(path: Path) -> bool:
    return path.suffix == ".parquet"


def _rows(files: list[Path], columns: list[str]) -> Iterator[dict[str, Any]]:
    """Rows as dicts with (at most) ``columns``, streamed file by file; a non-JSON line is ``{}``."""
    for f in files:
        for batch in iter_record_batches(f, columns, skip_blank_lines=True):
            for row in batch:
                yield {c: row[c] for c in columns if c in row}


def _has_score(files: list[Path]) -> bool:
    f = files[0]
    if _is_parquet(f):
        import pyarrow.parquet as pq

        return "score" in pq.ParquetFile(f).schema_arrow.names
    for row in _rows([f], ["score"]):
        return isinstance(row.get("score"), (int, float))
    return False


def read_seeds(cfg: SeedsConfig) -> tuple[list[Seed], Counter]:
    """The seeds and the counts of skipped records by reason (``bad_record``, ``language``, ``short``, ...)."""
    files = seed_files(cfg.path)
    skipped: Counter = Counter()
    wanted = set(cfg.languages)

    def usable(row: dict[str, Any], need_content: bool) -> bool:
        if not isinstance(row.get("id"), str) or not isinstance(row.get("language"), str):
            skipped["bad_record"] += 1
            return False
        if wanted and row["language"] not in wanted:
            skipped["language"] += 1
            return False
        if need_content:
            if not isinstance(row.get("content"), str):
                skipped["bad_record"] += 1
                return False
            if len(row["content"].strip()) < cfg.min_chars:
                skipped["short"] += 1
                return False
        return True

    seen: set[str] = set()
    if not _has_score(files):
        seeds = []
        for row in _rows(files, ["id", "language", "content"]):
            if not usable(row, True):
                continue
            if row["id"] in seen:
                skipped["duplicate_id"] += 1
                continue
            seen.add(row["id"])
            seeds.append(Seed(row["id"], row["language"], row["content"]))
            if cfg.max_seeds and len(seeds) >= cfg.max_seeds:
                break
        return seeds, skipped

    # Pass 1: the top ids by score (a min-heap of the best so far), reading no content. Records that
    # pass 2 then finds too short are dropped, not replaced: the seeds may be slightly fewer than asked.
    heap: list[tuple[float, tuple[int, ...], str]] = []
    for row in _rows(files, ["id", "language", "score"]):
        if not usable(row, False):
            continue
        if row["id"] in seen:
            skipped["duplicate_id"] += 1
            continue
        seen.add(row["id"])
        score = row.get("score")
        if not isinstance(score, (int, float)):
            skipped["no_score"] += 1
            continue
        item = (float(score), _reverse(row["id"]), row["id"])  # ties: the smaller id ranks higher
        if not cfg.max_seeds:
            heap.append(item)
        elif len(heap) < cfg.max_seeds:
            heapq.heappush(heap, item)
        else:
            heapq.heappushpop(heap, item)
    chosen = {i: s for s, _, i in heap}
    # Pass 2: their content.
    found: dict[str, Seed] = {}
    for row in _rows(files, ["id", "language", "content"]):
        sid = row.get("id")
        if sid in chosen and sid not in found and usable(row, True):
            found[sid] = Seed(sid, row["language"], row["content"], chosen[sid])
    seeds = sorted(found.values(), key=lambda s: (-(s.score or 0.0), s.id))
    return seeds, skipped


def _reverse(s: str) -> tuple[int, ...]:
    """A key that orders strings in reverse (a min-heap then drops the larger of two tied ids first)."""
    return (*(-ord(c) for c in s), 1)
