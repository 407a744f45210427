"""Helpers shared by the quality tests: the curated-corpus writer, a tiny BERT, small encoder configs."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from snowjax.quality.config import EncoderConfig
from snowjax.quality.encoder import default_encoder_dir

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# (language, glob, how many): a language mix like a curated corpus, from files on every CPython install
CORPUS_MIX = [("python", "*.py", 40), ("xml", "*.xml", 8), ("json", "*.json", 6)]
NUM_SHARDS = 3
# MiniLM's WordPiece vocabulary: the tiny model uses its tokenizer.json
TINY_BERT = {"vocab_size": 30522, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}
TINY_BERT["max_position_embeddings"] = 128


def stdlib_files() -> list[tuple[str, Path]]:
    out = []
    for language, pattern, count in CORPUS_MIX:
        paths = sorted(p for p in STDLIB.rglob(pattern) if "site-packages" not in p.parts and p.stat().st_size < 60_000)
        rng = np.random.default_rng(len(out))
        picks = rng.choice(len(paths), size=min(count, len(paths)), replace=False)
        out += [(language, paths[i]) for i in sorted(picks)]
    return out


def write_curated(out: Path, records: list[dict], num_shards: int) -> Path:
    """``out/files/files-NNNNN-of-MMMMM.parquet`` in the curated-data contract, round-robin over shards."""
    (out / "files").mkdir(parents=True, exist_ok=True)
    for s in range(num_shards):
        part = records[s::num_shards]
        pq.write_table(pa.Table.from_pylist(part), out / "files" / f"files-{s:05d}-of-{num_shards:05d}.parquet")
    return out


def write_tiny_bert(out: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny BERT saved as a Hugging Face ``BertModel`` directory, with MiniLM's tokenizer."""
    from snowjax.model.bert import BertConfig, random_hf_tensors, save_hf_bert

    cfg = BertConfig(**TINY_BERT)
    return save_hf_bert(random_hf_tensors(cfg, seed), cfg, out, tokenizer_json=default_encoder_dir() / "tokenizer.json")


def tiny_encoder_cfg(path: str | Path, **kw: object) -> EncoderConfig:
    """Encoder config for the tiny BERT: 32-token windows (so short files have three), two buckets."""
    base = dict(path=str(path), window_tokens=32, buckets=[16, 32], batch_size=16, max_chars=2000)
    return EncoderConfig(**{**base, **kw})
