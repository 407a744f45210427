"""``snowjax data annotate CONFIG``: train (or load) the annotator, score, select phase-2 data, report.

Input: a curated directory (``snowjax data prepare`` output): ``files/*.parquet`` (file
records with ``num_tokens``) and ``tokenizer.json``. Output, under ``out_dir``
(default ``<input>/quality``)::

    annotator/   head.safetensors + head.json (config, encoder, held-out metrics),
                 held_out.npz (ROC data), embeddings.npz (cached label embeddings)
    scores/      part-NNNNN.parquet, one per input shard (resumable; see scoring.py)
    top/         token dataset: the top files per language within the budget (phase 2)
    random/      token dataset: a seeded random selection of the same budget (ablation)
    report.json, report.md, *.png

A rerun resumes: it reuses the saved head and the finished score parts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from snowjax.config import ConfigError
from snowjax.quality.annotator import Annotator, TrainedHead, load_head, train_head
from snowjax.quality.config import AnnotateConfig, validate_annotate
from snowjax.quality.encoder import TextEncoder
from snowjax.quality.labels import build_labelled_set
from snowjax.quality.report import pick_examples, score_stats, write_report
from snowjax.quality.scoring import read_scores, score_shards
from snowjax.quality.selection import select_top_tokens_per_language, write_selection

log = logging.getLogger(__name__)


def input_shards(input_dir: Path) -> list[Path]:
    """The curated file shards of ``input_dir`` (``files/*.parquet``, or ``*.jsonl``), sorted."""
    files_dir = input_dir / "files"
    shards = sorted(files_dir.glob("*.parquet")) or sorted(files_dir.glob("*.jsonl"))
    if not shards:
        raise ConfigError(f"input: no files/*.parquet under {input_dir} (run `snowjax data prepare` first)")
    return shards


def _embedding_cache_key(encoder: TextEncoder, texts: list[str], labels: list[int]) -> str:
    h = hashlib.sha1()
    c = encoder.cfg
    h.update(repr((str(encoder.model_dir), c.pooling, c.normalize, c.window_tokens, c.max_windows, c.dtype)).encode())
    for t, y in zip(texts, labels, strict=True):
        h.update(hashlib.sha1(t.encode()).digest() + bytes([y]))
    return h.hexdigest()


def label_embeddings(
    encoder: TextEncoder, texts: list[str], labels: list[int], cache: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Window embeddings (W, E) and owners (W,) of the labelled texts, computed once and cached in ``cache``."""
    key = _embedding_cache_key(encoder, texts, labels)
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                log.info("label embeddings: reusing %s", cache)
                return z["embeddings"], z["owner"]
    log.info("embedding %d labelled files", len(texts))
    emb, owner = encoder.embed_texts(texts)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, embeddings=emb, owner=owner, key=np.asarray(key))
    return emb, owner


def get_head(
    cfg: AnnotateConfig, encoder: TextEncoder, shards: list[Path], out_dir: Path
) -> tuple[TrainedHead, dict[str, Any], dict[str, np.ndarray] | None]:
    """Load ``head.path``, else the head an earlier run saved in ``out_dir``, else train one on the labels.

    Returns the head, a labels summary for the report, and held-out ROC data (or None).
    """
    ann_dir = out_dir / "annotator"
    held_path = ann_dir / "held_out.npz"
    load_from = Path(cfg.head.path) if cfg.head.path else ann_dir if (ann_dir / "head.json").is_file() else None
    if load_from is not None:
        head, info = load_head(load_from)
        log.info("loaded the annotator head from %s", load_from)
        roc = None
        if (load_from / "held_out.npz").is_file():
            with np.load(load_from / "held_out.npz") as z:
                roc = {"scores": z["scores"], "labels": z["labels"]}
        return head, info.get("labels", {"source": f"loaded from {load_from}"}), roc
    labelled = build_labelled_set(cfg.labels, shards)
    emb, owner = label_embeddings(encoder, labelled.texts, labelled.labels, ann_dir / "embeddings.npz")
    labels = np.asarray(labelled.labels, np.int32)
    # files the encoder gave no window (nothing to tokenize) cannot be trained or evaluated on
    has_window = np.bincount(owner, minlength=len(labels)) > 0
    if not has_window.all():
        keep = np.flatnonzero(has_window)
        remap = -np.ones(len(labels), np.int64)
        remap[keep] = np.arange(len(keep))
        owner, labels = remap[owner], labels[keep]
    head, held = train_head(emb, owner, labels, cfg.head, cfg.labels.held_out, cfg.labels.seed)
    labels_info = {
        "source": labelled.source,
        "positives": int(labels.sum()),
        "negatives": int(len(labels) - labels.sum()),
        "skipped": labelled.skipped,
        "no_window": int((~has_window).sum()),
    }
    encoder_info = {"path": str(encoder.model_dir), **dataclasses.asdict(encoder.cfg)}
    head.save(ann_dir, encoder_info, labels=labels_info)
    np.savez(held_path, scores=held["scores"], labels=held["labels"])
    return head, labels_info, {"scores": held["scores"], "labels": held["labels"]}


def run_annotate(cfg: AnnotateConfig) -> dict[str, Any]:
    """The whole job; returns the report dict (also written as ``report.json``)."""
    from snowjax.parallel import make_mesh

    validate_annotate(cfg)
    input_dir = Path(cfg.input)
    shards = input_shards(input_dir)
    tokenizer_path = input_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ConfigError(f"input: no tokenizer.json in {input_dir}")
    out_dir = Path(cfg.out_dir) if cfg.out_dir else input_dir / "quality"
    out_dir.mkdir(parents=True, exist_ok=True)

    encoder = TextEncoder(cfg.encoder, mesh=make_mesh(cfg.mesh))
    head, labels_info, roc = get_head(cfg, encoder, shards, out_dir)
    summary = score_shards(Annotator(encoder, head), shards, out_dir)
    cols = read_scores(summary.parts)

    corpus_tokens = int(cols["num_tokens"][cols["num_tokens"] >= 0].sum())
    budget = cfg.selection.budget or corpus_tokens // 2
    selection: dict[str, Any] = {"budget": budget, "corpus_tokens": corpus_tokens}
    common = {"stage": "snowjax data annotate", "budget": budget, "head": head.metrics, "labels": labels_info}
    for order in ("score", "random") if cfg.selection.random_ablation else ("score",):
        kind = "top" if order == "score" else "random"
        chosen, budgets = select_top_tokens_per_language(
            cols["score"], cols["num_tokens"], cols["language"], budget, order=order, seed=cfg.selection.seed
        )
        path = write_selection(
            out_dir / kind,
            shards,
            cols["shard"],
            cols["row"],
            cols["score"],
            chosen,
            budgets,
            tokenizer_path,
            name=f"{cfg.selection.dataset_name}_{kind}",
            metadata={**common, "order": order, "description": f"phase-2 {kind} files per language within the budget"},
            num_shards=cfg.selection.num_shards or None,
        )
        selection[kind] = {
            "path": str(path),
            "selected_tokens": sum(b.selected_tokens for b in budgets.values()),
            "selected_files": int(chosen.sum()),
            "budget_per_language": {k: dataclasses.asdict(v) for k, v in budgets.items()},
        }
    report = {
        "input": str(input_dir),
        "out_dir": str(out_dir),
        "encoder": {"path": str(encoder.model_dir), **dataclasses.asdict(cfg.encoder)},
        "labels": labels_info,
        "head": {**dataclasses.asdict(head.cfg), **head.metrics},
        "scores": {
            "counts": summary.counts,
            "seconds": summary.seconds,
            "scored_shards": summary.scored_shards,
            "resumed_shards": summary.resumed_shards,
            "by_language": score_stats(cols["score"], cols["language"]),
        },
        "selection": selection,
        "examples": pick_examples(cols, shards, cfg.report_examples),
    }
    md = write_report(out_dir, report, cols, roc)
    log.info("report: %s", md)
    return report
