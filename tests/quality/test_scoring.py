"""Scoring at scale: resume after an interruption, bad records, and the Beam step."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from quality_helpers import tiny_encoder_cfg, write_curated

from snowjax.config import MeshConfig
from snowjax.parallel import make_mesh
from snowjax.quality.annotator import Annotator, train_head
from snowjax.quality.config import HeadConfig
from snowjax.quality.encoder import TextEncoder
from snowjax.quality.job import input_shards
from snowjax.quality.scoring import read_scores, score_records, score_shards


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def annotator(tiny_bert_dir) -> Annotator:
    encoder = TextEncoder(tiny_encoder_cfg(tiny_bert_dir), mesh=make_mesh(MeshConfig(data=-1)))
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((20, encoder.dim)).astype(np.float32)
    head, _ = train_head(emb, np.arange(20), (np.arange(20) % 2).astype(np.int32), HeadConfig(steps=3))
    return Annotator(encoder, head)


def test_interrupted_scoring_resumes_without_rescoring(annotator, curated_dir, tmp_path):
    shards = input_shards(curated_dir)
    assert len(shards) == 3

    def stop_after_first(shard, path):
        if shard == 0:
            raise Interrupted

    with pytest.raises(Interrupted):
        score_shards(annotator, shards, tmp_path / "run", on_shard_done=stop_after_first)
    first = tmp_path / "run" / "scores" / "part-00000.parquet"
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    assert not (tmp_path / "run" / "scores" / "part-00001.parquet").exists()

    resumed = score_shards(annotator, shards, tmp_path / "run")
    assert resumed.resumed_shards == [0] and resumed.scored_shards == [1, 2]
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == stamp  # not rewritten
    fresh = score_shards(annotator, shards, tmp_path / "fresh")
    assert fresh.scored_shards == [0, 1, 2]
    a, b = read_scores(resumed.parts), read_scores(fresh.parts)
    np.testing.assert_array_equal(a["score"], b["score"])  # identical, NaN for the empty record included
    assert a["id"].tolist() == b["id"].tolist()
    assert resumed.counts == fresh.counts and fresh.counts["empty"] == 1
    assert fresh.counts["scored"] == len(a["id"]) - 1
    assert not list((tmp_path / "run" / "scores").glob(".*tmp*"))  # no temporary left behind


def test_bad_records_are_scored_or_skipped_with_a_count(annotator):
    records = [
        {"id": "ok", "content": "def f():\n    return 1\n", "language": "python", "num_tokens": 9},
        {"id": "empty", "content": "", "language": "python"},
        {"id": "blank", "content": " \n\t\n", "language": "python"},
        {"id": "none", "content": None},
        {"id": "bytes", "content": b"\xff\xfe not utf-8 \xc3\x28", "language": "c"},
        {"id": "surrogate", "content": "x = '\udcff'", "language": "python"},
        {"id": "huge", "content": "word " * 100_000, "language": "text", "num_tokens": 100_000},
        {"id": "utf8-bytes", "content": "print('é')".encode(), "language": "python"},
    ]
    rows, counts = score_records(annotator, records)
    by_id = {r["id"]: r for r in rows}
    assert [r["id"] for r in rows] == [r["id"] for r in records]  # every record accounted for, in order
    assert counts == {"scored": 3, "empty": 2, "missing": 1, "invalid_utf8": 2, "huge": 1}
    for rid in ("ok", "huge", "utf8-bytes"):
        assert by_id[rid]["skip"] == "" and 0.0 <= by_id[rid]["score"] <= 1.0
    assert by_id["huge"]["windows"] == 3
    for rid, reason in [("empty", "empty"), ("blank", "empty"), ("none", "missing"), ("bytes", "invalid_utf8")]:
        assert by_id[rid]["skip"] == reason and np.isnan(by_id[rid]["score"]) and by_id[rid]["windows"] == 0
    assert by_id["surrogate"]["skip"] == "invalid_utf8"


def test_parts_of_another_input_are_refused(annotator, curated_dir, tmp_path):
    shards = input_shards(curated_dir)
    score_shards(annotator, shards[:1], tmp_path)
    with pytest.raises(ValueError, match="use another out_dir"):
        score_shards(annotator, shards[1:2], tmp_path)


def test_beam_step_scores_like_the_batch_path(annotator, tiny_bert_dir, tmp_path, curated_dir):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from snowjax.quality.beam import ScoreFiles

    annotator.head.save(tmp_path / "head")
    records = pq.read_table(input_shards(curated_dir)[0]).to_pylist()[:5]
    records.append({"id": "bad", "content": b"\xff\xfe", "language": "c"})
    expected, _ = score_records(annotator, records)
    expected_pairs = [
        (r["id"], r["skip"], round(r["score"], 5) if r["score"] == r["score"] else None) for r in expected
    ]
    with beam.Pipeline(runner="DirectRunner") as p:
        out = (
            p
            | beam.Create(records)
            | ScoreFiles(annotator.encoder.cfg, str(tmp_path / "head"), max_batch=4)
            | beam.Map(lambda r: (r["id"], r["skip"], round(r["score"], 5) if r["score"] == r["score"] else None))
        )
        assert_that(out, equal_to(expected_pairs))


def test_score_table_columns(annotator, tmp_path):
    write_curated(tmp_path / "c", [{"id": "a", "content": "x = 1\n", "language": "python", "num_tokens": 4}], 1)
    (part,) = score_shards(annotator, input_shards(tmp_path / "c"), tmp_path / "o").parts
    table = pq.read_table(part)
    assert table.column_names == ["id", "language", "num_tokens", "score", "windows", "skip"]
    assert table.to_pylist()[0]["num_tokens"] == 4
