"""Reading file records (JSONL or Parquet) in batches, and checking their ``content``.

Records are plain dicts (the curated-data contract: ``id``, ``content``, ``language``,
``repo``, ``path``, ``license``, ``stars``, ``num_tokens``). Parquet is read one record
batch at a time, so files of any size stream in bounded memory.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

READ_BATCH_ROWS = 1024  # rows per Parquet record batch read


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Files named by ``patterns`` (paths, globs, or directories of ``*.parquet``/``*.jsonl``), sorted, deduplicated.

    Raises:
      FileNotFoundError: a pattern that matches nothing.
    """
    out: list[Path] = []
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            found = sorted([*p.glob("*.parquet"), *p.glob("*.jsonl")])
        else:
            found = sorted(Path(x) for x in glob.glob(pattern, recursive=True))
        if not found:
            raise FileNotFoundError(f"{pattern}: no such file (or no *.parquet / *.jsonl in the directory)")
        out.extend(found)
    return sorted(set(out))


def iter_record_batches(
    path: str | Path,
    columns: Sequence[str] | None = None,
    batch_rows: int = READ_BATCH_ROWS,
    *,
    skip_blank_lines: bool = False,
) -> Iterator[list[dict[str, Any]]]:
    """Records of a ``.parquet`` or JSON-lines file, ``batch_rows`` at a time (the last batch may be shorter).

    With ``columns``, Parquet reads only those that exist (missing ones are absent
    from the dicts). A JSONL line that is not a JSON object is yielded as ``{}`` (so a
    caller counts it as missing content, and row positions stay aligned with lines);
    blank lines too, unless ``skip_blank_lines``.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        have = set(pf.schema_arrow.names)
        cols = None if columns is None else [c for c in columns if c in have]
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            yield batch.to_pylist()
        return
    gz = path.suffix == ".gz"
    if (path.with_suffix("") if gz else path).suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: records must be .parquet or JSON lines (.jsonl, .json, optionally .gz)")
    rows: list[dict[str, Any]] = []
    with gzip.open(path, "rb") if gz else path.open("rb") as f:
        for line in f:
            if skip_blank_lines and not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            rows.append(rec if isinstance(rec, dict) else {})
            if len(rows) == batch_rows:
                yield rows
                rows = []
    if rows:
        yield rows


def clean_content(value: Any) -> tuple[str | None, str]:
    """A record's ``content`` as valid text, or ``(None, reason)``: missing, invalid_utf8, empty.

    Bytes are decoded as UTF-8; a str holding lone surrogates (what a lenient reader
    produces from broken bytes) counts as invalid UTF-8 too.
    """
    if value is None:
        return None, "missing"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid_utf8"
    if not isinstance(value, str):
        return None, "missing"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None, "invalid_utf8"
    if not value.strip():
        return None, "empty"
    return value, ""
