"""Fixtures for the quality tests: a small curated corpus from the stdlib, and a tiny BERT in Hugging Face layout."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from quality_helpers import NUM_SHARDS, STDLIB, stdlib_files, write_curated, write_tiny_bert

from snowjax.data.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="session")
def curated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small curated corpus (python / xml / json stdlib files, plus one empty record) with a tiny BPE."""
    files = [(lang, p, p.read_text(encoding="utf-8", errors="replace")) for lang, p in stdlib_files()]
    tok = train_bpe_tokenizer((t for _, _, t in files), 512)
    out = tmp_path_factory.mktemp("curated")
    tok.save(str(out / "tokenizer.json"))
    records = []
    for lang, path, text in files:
        rel = path.relative_to(STDLIB).as_posix()
        records.append(
            {
                "id": hashlib.sha1(f"cpython/{rel}".encode()).hexdigest(),
                "content": text,
                "language": lang,
                "repo": "cpython",
                "path": rel,
                "license": "PSF-2.0",
                "stars": 0,
                "num_tokens": len(tok.encode(text, add_special_tokens=False).ids),
            }
        )
    records.append({**records[0], "id": "empty", "content": "", "num_tokens": 0, "path": "empty.py"})
    return write_curated(out, records, NUM_SHARDS)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
