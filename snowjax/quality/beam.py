"""Quality scoring as a step of an Apache Beam pipeline (DirectRunner here; Dataflow / Flink / Spark at scale).

::

    scored = records | ScoreFiles(encoder_cfg, head_dir)    # dicts in, score rows out

Records (the curated-data dicts) are grouped by ``beam.BatchElements`` so the encoder sees
full batches, and :class:`ScoreBatchDoFn` loads the encoder and head once per worker
(``setup``), then scores each batch with :func:`snowjax.quality.scoring.score_records`:
one output dict per record, with the columns of :data:`snowjax.quality.scoring.SCHEMA`.
Only the config and the head's directory are pickled to workers, never weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from snowjax.quality.config import EncoderConfig


class ScoreBatchDoFn(beam.DoFn):
    """Scores lists of records; the annotator is built once per worker in :meth:`setup`."""

    def __init__(self, encoder: dict[str, Any], head_dir: str, mesh: dict[str, Any] | None = None):
        self.encoder_cfg, self.head_dir, self.mesh_cfg = encoder, head_dir, mesh or {}
        self._annotator: Any = None

    def setup(self) -> None:
        from snowjax.config import MeshConfig
        from snowjax.parallel import make_mesh
        from snowjax.quality.annotator import Annotator, load_head
        from snowjax.quality.encoder import TextEncoder

        head, _ = load_head(self.head_dir)
        mesh = make_mesh(MeshConfig(**self.mesh_cfg)) if self.mesh_cfg else None
        self._annotator = Annotator(TextEncoder(EncoderConfig(**self.encoder_cfg), mesh=mesh), head)
        self._counter = {k: beam.metrics.Metrics.counter("snowjax_quality", k) for k in ("scored", "skipped")}

    def process(self, records: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from snowjax.quality.scoring import score_records

        rows, counts = score_records(self._annotator, records)
        self._counter["scored"].inc(counts.get("scored", 0))
        self._counter["skipped"].inc(sum(v for k, v in counts.items() if k not in ("scored", "huge")))
        yield from rows


class ScoreFiles(beam.PTransform):
    """PCollection of file records -> PCollection of score rows (id, language, num_tokens, score, windows, skip)."""

    def __init__(self, encoder: EncoderConfig, head_dir: str, max_batch: int = 256, mesh: dict[str, Any] | None = None):
        super().__init__()
        self.encoder, self.head_dir, self.max_batch, self.mesh = encoder, head_dir, max_batch, mesh

    def expand(self, records: Any) -> Any:
        return (
            records
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.max_batch)
            | "Score" >> beam.ParDo(ScoreBatchDoFn(dataclasses.asdict(self.encoder), str(self.head_dir), self.mesh))
        )
