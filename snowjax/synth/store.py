"""The append-only JSONL of teacher replies: one record per seed id, so a restarted job resumes.

Each line is one JSON object with at least ``id`` (the seed id) and ``status`` (``ok``: a reply;
``failed``: a permanent refusal such as HTTP 400, which asking again would not change). Lines
are written as each request completes and flushed at once; :meth:`ReplyStore.close` fsyncs.
On opening, the existing file is read back:

- a last line without its newline (the process died mid-write) is cut off and counted
  (``truncated_tail``), so the next append starts on a clean line;
- an unparsable line elsewhere is skipped and counted (``bad_lines``);
- a second record for an id already seen is ignored and counted (``duplicate_lines``): the
  first one wins, as it did when the job that wrote it moved on.

:meth:`ReplyStore.append` refuses an id that is already stored, so no id is ever written twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


class ReplyStore:
    """Records by seed id, read from and appended to ``path`` (created with its parent folders)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.bad_lines = 0
        self.duplicate_lines = 0
        self.truncated_tail = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._file: IO[str] | None = self.path.open("a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1  # everything up to the last newline is whole lines
        if complete < len(data):
            self.truncated_tail = 1
            log.warning(
                "%s: dropping an incomplete last line (%d bytes; the writer was interrupted)",
                self.path,
                len(data) - complete,
            )
            with self.path.open("r+b") as f:
                f.truncate(complete)
        for n, line in enumerate(data[:complete].decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                self.bad_lines += 1
                log.warning("%s:%d: not a reply record; skipped", self.path, n)
                continue
            if record["id"] in self.records:
                self.duplicate_lines += 1
                continue
            self.records[record["id"]] = record

    def __contains__(self, seed_id: object) -> bool:
        return seed_id in self.records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records.values())

    def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` as one line and flush it. Raises ``ValueError`` if its id is already stored."""
        if self._file is None:
            raise ValueError(f"{self.path}: the store is closed")
        seed_id = record.get("id")
        if not isinstance(seed_id, str):
            raise ValueError(f"a reply record needs a string id, got {seed_id!r}")
        if seed_id in self.records:
            raise ValueError(f"{self.path}: seed {seed_id} already has a record; not writing it twice")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.records[seed_id] = record

    def close(self) -> None:
        """Flush and fsync the file (the records survive a machine crash from here on)."""
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def __enter__(self) -> ReplyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
