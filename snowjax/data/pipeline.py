"""The curation stages composed as Apache Beam pipelines.

Two pipelines, because the tokenizer is trained between them on a sample of the curated files:

``curate``:   work units -> ingest -> filters -> exact dedup -> MinHash near dedup -> decontamination
              -> ``<stage>/curated-*.parquet`` (+ cluster sizes, decontamination hits)
``tokenize``: curated files -> token ids -> ``OUT/files/*.parquet`` (records + ``num_tokens``)
              and repository (or file) documents -> ``<stage>/documents-*.parquet``

With a tokenizer given in advance, :func:`build_prepare` runs both as one pipeline: the curated
records go straight to the tokenizer (no Parquet round trip, one start-up of the workers).

Every stage counts the files and bytes it takes in and lets out, and each drop by reason, as Beam
counters named ``<stage>/<what>`` (:func:`counter_values` reads them back). The stages are the
pure functions of :mod:`snowjax.data.ingest`, :mod:`~snowjax.data.filters`,
:mod:`~snowjax.data.dedup`, :mod:`~snowjax.data.decontam` and :mod:`~snowjax.data.documents`;
this module only wires them. The same code runs on the DirectRunner here and on Dataflow,
Flink or Spark through pipeline options.

Dedup at scale (:func:`_dedup`): the decisions are made on each file's small metadata (id,
license, stars, bytes, LSH band keys), never its content: exact keepers per content hash, then
near-duplicate signatures' buckets in parallel and candidate pairs (one edge from each bucket's
smallest id to each other member), joined into clusters by one union-find over all pairs, as
BigCode's pipeline does (the pairs of near-duplicates are a small fraction of the corpus). The
files themselves are shuffled once, joined by id with the ids to drop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from snowjax.data import dedup, documents
from snowjax.data.decontam import Decontaminator
from snowjax.data.filters import FilterConfig, filter_reason
from snowjax.data.ingest import Dropped, IngestLimits, Unit, read_unit
from snowjax.data.tokenizer import encode_ids_batch

log = logging.getLogger(__name__)

NAMESPACE = "snowjax"
STAGES = ("ingest", "filter", "exact_dedup", "near_dedup", "decontaminate", "tokenize")

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("content", pa.string()),
        ("language", pa.string()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("license", pa.string()),
        ("stars", pa.int64()),
    ]
)
FILES_SCHEMA = RECORD_SCHEMA.append(pa.field("num_tokens", pa.int64()))
DOCUMENT_SCHEMA = pa.schema(
    [
        ("language", pa.string()),
        ("repo", pa.string()),
        ("split", pa.string()),
        ("num_files", pa.int64()),
        ("tokens", pa.list_(pa.int32())),
    ]
)


def _nbytes(record: dict[str, Any]) -> int:
    return len(record["content"].encode("utf-8"))


class _Counts:
    """Beam counters of one stage: files/bytes in and out, drops by reason."""

    def __init__(self, stage: str):
        self.stage = stage
        self._cache: dict[str, Any] = {}

    def inc(self, what: str, n: int = 1) -> None:
        if what not in self._cache:
            self._cache[what] = Metrics.counter(NAMESPACE, f"{self.stage}/{what}")
        self._cache[what].inc(n)

    def seen(self, direction: str, nbytes: int) -> None:
        self.inc(f"files_{direction}")
        self.inc(f"bytes_{direction}", nbytes)

    def dropped(self, reason: str, nbytes: int) -> None:
        self.inc(f"drop:{reason}")
        self.inc(f"drop_bytes:{reason}", nbytes)


PROGRESS_SECONDS = 10.0


def quiet_beam_logs() -> None:
    """Beam's INFO chatter to WARNING; forwarded worker logs only when they are snowjax progress lines."""
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    forwarded = logging.getLogger("apache_beam.runners.portability.local_job_service")
    forwarded.setLevel(logging.INFO)
    if not any(isinstance(f, _ProgressOnly) for f in forwarded.filters):
        forwarded.addFilter(_ProgressOnly())


class _ProgressOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or PROGRESS_TAG in record.getMessage()


PROGRESS_TAG = "snowjax progress:"


class IngestFn(beam.DoFn):
    """Work unit -> records; bad items counted by reason. Each worker logs its progress every few seconds."""

    def __init__(self, limits: IngestLimits):
        self.limits = limits
        self.counts = _Counts("ingest")

    def setup(self) -> None:
        self._units = self._files = self._bytes = 0
        self._last = time.monotonic()

    def _progress(self) -> None:
        self._units += 1
        if time.monotonic() - self._last >= PROGRESS_SECONDS:
            self._last = time.monotonic()
            log.info(
                "%s a worker has ingested %d work units, %d files, %.1f MB",
                PROGRESS_TAG,
                self._units,
                self._files,
                self._bytes / 1e6,
            )

    def process(self, unit: Unit) -> Iterator[dict[str, Any]]:
        for item in self._read(unit):
            self._files += 1
            yield item
        self._progress()

    def _read(self, unit: Unit) -> Iterator[dict[str, Any]]:
        for item in read_unit(unit, self.limits):
            if isinstance(item, Dropped):
                self.counts.seen("in", item.nbytes)
                self.counts.dropped(item.reason, item.nbytes)
            else:
                n = _nbytes(item)
                self._bytes += n
                self.counts.seen("in", n)
                self.counts.seen("out", n)
                yield item


class FilterFn(beam.DoFn):
    """The StarCoder heuristics; the first failing rule names the drop."""

    def __init__(self, cfg: FilterConfig, languages: tuple[str, ...]):
        self.cfg = cfg
        self.languages = frozenset(languages)
        self.counts = _Counts("filter")

    def process(self, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
        n = _nbytes(record)
        self.counts.seen("in", n)
        if self.languages and record["language"] not in self.languages:
            reason: str | None = "language_not_selected"
        else:
            reason = filter_reason(record, self.cfg)
        if reason is not None:
            self.counts.dropped(reason, n)
            return
        self.counts.seen("out", n)
        yield record


# A file's dedup metadata, all that the exact and near decisions need (the content stays put):
# (id, license, stars, UTF-8 bytes, LSH band keys of its MinHash signature, or () without near dedup).
Meta = tuple[str, str, int, int, tuple[bytes, ...]]


def _meta_sort_key(meta: tuple) -> tuple[int, int, str]:
    """The keeper order (:func:`snowjax.data.dedup.keeper_sort_key`) of a meta's (id, license, stars, ...)."""
    return dedup.keeper_sort_key({"id": meta[0], "license": meta[1], "stars": meta[2]})


class DedupKeysFn(beam.DoFn):
    """Record -> (normalised content hash, or the id without exact dedup; :data:`Meta`)."""

    def __init__(self, exact: bool, near: dedup.MinHashConfig | None):
        self.exact = exact
        self.near = near

    def setup(self) -> None:
        if self.near is not None:
            self.hasher = dedup.MinHasher(self.near)
            self.bands, self.rows = self.near.lsh()

    def process(self, record: dict[str, Any]) -> Iterator[tuple[str, Meta]]:
        content = record["content"]
        key = dedup.normalized_content_hash(content) if self.exact else record["id"]
        bands: tuple[bytes, ...] = ()
        if self.near is not None:
            bands = tuple(dedup.band_keys(self.hasher.signature(content), self.bands, self.rows))
        yield key, (record["id"], record["license"], record["stars"], _nbytes(record), bands)


def _exact_keeper(group: tuple[str, Any]) -> Iterator[Any]:
    """The files of one content hash -> the keeper's meta; ("drops") (id, "exact") for the others."""
    metas = list(group[1])
    keep = min(metas, key=_meta_sort_key)
    yield keep
    for other in {m[0] for m in metas} - {keep[0]}:
        yield beam.pvalue.TaggedOutput("drops", (other, "exact"))


def _band_members(meta: Meta) -> Iterator[tuple[bytes, str]]:
    for key in meta[4]:
        yield key, meta[0]


def _bucket_edges(bucket: tuple[bytes, Any]) -> Iterator[tuple[str, str]]:
    """A star of edges from the bucket's smallest id: enough to connect all its members."""
    ids = sorted(set(bucket[1]))
    for other in ids[1:]:
        yield ids[0], other


def _components(pairs: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(id, cluster root) for every id in a candidate pair."""
    return iter(sorted(dedup.clusters_from_pairs(pairs).items()))


def _cluster_drops(cluster: tuple[str, Any]) -> Iterator[Any]:
    """Cluster members (id, license, stars) -> (id, "near") for those to drop; the cluster's size (tagged)."""
    members = list(cluster[1])
    keep = min(members, key=_meta_sort_key)
    yield beam.pvalue.TaggedOutput("sizes", len(members))
    for m in members:
        if m[0] != keep[0]:
            yield m[0], "near"


class ApplyDedupFn(beam.DoFn):
    """(id, {records, drops}) -> the record unless a decision dropped it; counts both dedup stages.

    Records with one id are the same file read twice (the id hashes repository, path and
    content): with exact dedup on, the first is kept and the others are exact duplicates.
    """

    def __init__(self, exact: bool, near: bool):
        self.exact = _Counts("exact_dedup") if exact else None
        self.near = _Counts("near_dedup") if near else None

    def process(self, joined: tuple[str, dict[str, list[Any]]]) -> Iterator[dict[str, Any]]:
        _, parts = joined
        reasons = set(parts["drops"])
        for i, record in enumerate(parts["records"]):
            n = _nbytes(record)
            if self.exact is not None:
                self.exact.seen("in", n)
                if i > 0 or "exact" in reasons:
                    self.exact.dropped("duplicate", n)
                    continue
                self.exact.seen("out", n)
            if self.near is not None:
                self.near.seen("in", n)
                if "near" in reasons:
                    self.near.dropped("near_duplicate", n)
                    continue
                self.near.seen("out", n)
            yield record


def _dedup(
    records: beam.PCollection, exact: bool, near: dedup.MinHashConfig | None
) -> tuple[beam.PCollection, beam.PCollection | None]:
    """Exact and near dedup with one shuffle of the files themselves.

    Both decisions are made on :data:`Meta` (ids, licenses, stars, band keys): exact keepers per
    content hash, then LSH buckets, candidate edges, one union-find and a keeper per cluster.
    The files are then joined once, by id, with the ids to drop. Returns (records, cluster sizes).
    """
    metas = records | "DedupKeys" >> beam.ParDo(DedupKeysFn(exact, near))
    drops = []
    if exact:
        decided = (
            metas
            | "GroupByHash" >> beam.GroupByKey()
            | "KeepOnePerHash" >> beam.FlatMap(_exact_keeper).with_outputs("drops", main="keepers")
        )
        keepers, drops = decided.keepers, [decided.drops]
    else:
        keepers = metas | "Metas" >> beam.Values()
    sizes = None
    if near is not None:
        edges = (
            keepers
            | "BandMembers" >> beam.FlatMap(_band_members)
            | "GroupByBand" >> beam.GroupByKey()
            | "BucketEdges" >> beam.FlatMap(_bucket_edges)
            | "DistinctEdges" >> beam.Distinct()
        )
        roots = edges | "AllEdges" >> beam.combiners.ToList() | "UnionFind" >> beam.FlatMap(_components)
        owners = keepers | "KeeperMeta" >> beam.Map(lambda m: (m[0], (m[0], m[1], m[2])))
        clusters = (
            {"root": roots, "meta": owners}
            | "JoinRoots" >> beam.CoGroupByKey()
            | "ByRoot" >> beam.FlatMap(lambda kv: [(root, kv[1]["meta"][0]) for root in kv[1]["root"]])
            | "GroupClusters" >> beam.GroupByKey()
            | "ClusterDrops" >> beam.FlatMap(_cluster_drops).with_outputs("sizes", main="drops")
        )
        sizes = clusters.sizes
        drops.append(clusters.drops)
    records = (
        {
            "records": records | "ById" >> beam.Map(lambda r: (r["id"], r)),
            "drops": tuple(drops) | "AllDrops" >> beam.Flatten(),
        }
        | "JoinDrops" >> beam.CoGroupByKey()
        | "ApplyDedup" >> beam.ParDo(ApplyDedupFn(exact, near is not None))
    )
    return records, sizes


class DecontaminateFn(beam.DoFn):
    """Drop files that contain a benchmark item; each hit goes to the ``hits`` output."""

    def __init__(self, decontaminator: Decontaminator | None):
        self.decontaminator = decontaminator
        self.counts = _Counts("decontaminate")

    def process(self, record: dict[str, Any]) -> Iterator[Any]:
        n = _nbytes(record)
        self.counts.seen("in", n)
        match = self.decontaminator.match(record["content"]) if self.decontaminator is not None else None
        if match is None:
            self.counts.seen("out", n)
            yield record
            return
        self.counts.dropped(f"{match.benchmark}:{match.method}", n)
        hit = {"id": record["id"], "repo": record["repo"], "path": record["path"], "language": record["language"]}
        hit.update({k: getattr(match, k) for k in ("benchmark", "task_id", "kind", "method", "snippet")})
        yield beam.pvalue.TaggedOutput("hits", json.dumps(hit, sort_keys=True))


def build_curate(
    p: beam.Pipeline,
    units: list[Unit],
    *,
    stage_prefix: str,
    limits: IngestLimits,
    filters: FilterConfig,
    languages: tuple[str, ...],
    exact_dedup: bool,
    near_dedup: dedup.MinHashConfig | None,
    decontaminator: Decontaminator | None,
    write_curated: bool = True,
) -> beam.PCollection:
    """Add the curation stages to ``p``: units in; cluster sizes and hits under ``stage_prefix``.

    Returns the curated records, also written to ``<stage_prefix>/curated-*.parquet`` if ``write_curated``.
    """
    records = (
        p
        | "Units" >> beam.Create(units, reshuffle=False)
        | "SpreadUnits" >> beam.Reshuffle()
        | "Ingest" >> beam.ParDo(IngestFn(limits))
        | "Filter" >> beam.ParDo(FilterFn(filters, languages))
    )
    sizes = None
    if exact_dedup or near_dedup is not None:
        records, sizes = _dedup(records, exact_dedup, near_dedup)
    decontaminated = records | "Decontaminate" >> beam.ParDo(DecontaminateFn(decontaminator)).with_outputs(
        "hits", main="records"
    )
    if write_curated:
        _ = decontaminated.records | "WriteCurated" >> beam.io.WriteToParquet(
            f"{stage_prefix}/curated", RECORD_SCHEMA, file_name_suffix=".parquet"
        )
    _ = decontaminated.hits | "WriteHits" >> beam.io.WriteToText(
        f"{stage_prefix}/decontamination", file_name_suffix=".jsonl", num_shards=1
    )
    if sizes is not None:
        _ = (
            sizes
            | "CountSizes" >> beam.combiners.Count.PerElement()
            | "SizeJson" >> beam.MapTuple(lambda size, n: json.dumps([size, n]))
            | "WriteSizes"
            >> beam.io.WriteToText(f"{stage_prefix}/cluster_sizes", file_name_suffix=".jsonl", num_shards=1)
        )
    return decontaminated.records


class TokenizeFn(beam.DoFn):
    """Batches of curated records -> each record with ``num_tokens`` and its code's ids (``tokens``, EOS excluded).

    Ids travel as int32 NumPy arrays: Beam encodes a list of ints element by element, an array in one piece.
    """

    def __init__(self, tokenizer_path: str):
        self.tokenizer_path = tokenizer_path
        self.counts = _Counts("tokenize")

    def setup(self) -> None:
        from snowjax.data.tokenizer import load_tokenizer

        self.tok = load_tokenizer(self.tokenizer_path)

    def process(self, batch: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record, ids in zip(batch, encode_ids_batch(self.tok, [r["content"] for r in batch]), strict=True):
            n = _nbytes(record)
            self.counts.seen("in", n)
            self.counts.seen("out", n)
            self.counts.inc(f"tokens:{record['language']}", len(ids))
            yield {**record, "num_tokens": len(ids), "tokens": ids}


class RepositoryDocumentFn(beam.DoFn):
    """((language, repo), files) -> one StarCoder2-format repository document."""

    def __init__(self, tokenizer_path: str, seed: int, metadata_probability: float, validation_fraction: float):
        self.tokenizer_path = tokenizer_path
        self.seed = seed
        self.metadata_probability = metadata_probability
        self.validation_fraction = validation_fraction

    def setup(self) -> None:
        from snowjax.data.tokenizer import load_tokenizer

        tok = load_tokenizer(self.tokenizer_path)
        self.encode = lambda text: tok.encode(text, add_special_tokens=False).ids

    def process(self, group: tuple[tuple[str, str], Any]) -> Iterator[dict[str, Any]]:
        (language, repo), files = group
        files = [(f["path"], f["tokens"]) for f in files]
        tokens = documents.repository_document(
            repo, files, self.encode, seed=self.seed, metadata_probability=self.metadata_probability
        )
        split = (
            "validation" if documents.validation_repo(repo, language, self.seed, self.validation_fraction) else "train"
        )
        yield {"language": language, "repo": repo, "split": split, "num_files": len(files), "tokens": tokens}


def _file_document(record: dict[str, Any], seed: int, validation_fraction: float) -> dict[str, Any]:
    split = (
        "validation"
        if documents.validation_repo(record["repo"], record["language"], seed, validation_fraction)
        else "train"
    )
    return {
        "language": record["language"],
        "repo": f"{record['repo']}/{record['path']}",
        "split": split,
        "num_files": 1,
        "tokens": documents.file_document(record["tokens"]),
    }


def build_tokenize(p: beam.Pipeline, *, curated_pattern: str, **kwargs: Any) -> None:
    """Tokenize the curated Parquet files (``curated_pattern``); the rest as :func:`tokenize_curated`."""
    tokenize_curated(p | "ReadCurated" >> beam.io.ReadFromParquet(curated_pattern), **kwargs)


def build_prepare(p: beam.Pipeline, *, curate: dict[str, Any], tokenize: dict[str, Any]) -> None:
    """Curation and tokenization as one pipeline, for a tokenizer given in advance (nothing to train between)."""
    tokenize_curated(build_curate(p, **curate, write_curated=False), **tokenize)


def tokenize_curated(
    curated: beam.PCollection,
    *,
    tokenizer_path: str,
    files_prefix: str,
    documents_prefix: str,
    levels: tuple[str, ...],
    seed: int,
    metadata_probability: float,
    validation_fraction: float,
) -> None:
    """Add tokenization, the file table and the training documents of each level (``documents_prefix-<level>``)."""
    tokenized = (
        curated
        | "Batch" >> beam.BatchElements(min_batch_size=8, max_batch_size=256)
        | "Tokenize" >> beam.ParDo(TokenizeFn(tokenizer_path))
    )
    _ = (
        tokenized
        | "FileRows" >> beam.Map(lambda r: {k: r[k] for k in FILES_SCHEMA.names})
        | "WriteFiles" >> beam.io.WriteToParquet(files_prefix, FILES_SCHEMA, file_name_suffix=".parquet")
    )
    for level in levels:
        if level == "repository":
            docs = (
                tokenized
                | "ByRepo"
                >> beam.Map(lambda r: ((r["language"], r["repo"]), {"path": r["path"], "tokens": r["tokens"]}))
                | "GroupRepos" >> beam.GroupByKey()
                | "RepoDocuments"
                >> beam.ParDo(RepositoryDocumentFn(tokenizer_path, seed, metadata_probability, validation_fraction))
            )
        elif level == "file":
            docs = tokenized | "FileDocuments" >> beam.Map(_file_document, seed, validation_fraction)
        else:
            raise ValueError(f"unknown document level {level!r}")
        _ = docs | f"Write_{level}" >> beam.io.WriteToParquet(
            f"{documents_prefix}-{level}", DOCUMENT_SCHEMA, file_name_suffix=".parquet"
        )


def counter_values(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """``{"<stage>/<what>": value}`` of this module's counters after ``result`` finished."""
    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out
