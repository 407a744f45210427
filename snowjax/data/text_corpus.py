"""Build a tokenized dataset from folders of text files (the demo corpus: Python's stdlib).

Files are read as UTF-8 and kept verbatim; unreadable, binary (NUL bytes), invalid
UTF-8 and empty files are skipped and counted. A byte-level BPE tokenizer is trained
on the train split, then both splits are written with :func:`write_token_dataset`.
The whole corpus is held in memory: this is for corpora of tens of megabytes, such as
the standard library (~1.8k files, ~31 MB); large corpora go through the curation
pipeline instead.
"""

from __future__ import annotations

import collections
import logging
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from snowjax.data.shards import DEFAULT_NAME, SUMMARY_FILENAME, write_token_dataset
from snowjax.data.tokenizer import TOKENIZER_FILENAME, encode_documents, train_bpe_tokenizer

log = logging.getLogger(__name__)

_LANGUAGES = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".ts": "typescript",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".hpp": "cpp",
    ".go": "go",
    ".rs": "rust",
    ".rb": "ruby",
    ".sh": "shell",
    ".md": "markdown",
    ".rst": "restructuredtext",
    ".txt": "text",
}
DEFAULT_EXCLUDE: tuple[str, ...] = ("site-packages", "dist-packages", "__pycache__", ".git")
_ENCODE_BATCH = 256  # documents per tokenizers.encode_batch call


@dataclass(frozen=True)
class TextFile:
    """One document: its text and where it came from."""

    text: str
    source: str  # "<input dir name>/<path relative to it>"
    language: str


def language_of(path: Path) -> str:
    """Language label from the file extension (the bare extension when unknown)."""
    suffix = path.suffix.lower()
    return _LANGUAGES.get(suffix, suffix.lstrip(".") or "unknown")


def iter_files(input_dirs: Sequence[str | Path], pattern: str, exclude: Sequence[str]) -> Iterator[tuple[Path, Path]]:
    """``(root, file)`` for files matching ``pattern`` under each root, sorted, skipping ``exclude`` dir names."""
    excluded = set(exclude)
    for root in map(Path, input_dirs):
        if not root.is_dir():
            raise FileNotFoundError(f"input directory {root} does not exist")
        for path in sorted(root.rglob(pattern)):
            if path.is_file() and not excluded.intersection(path.relative_to(root).parts[:-1]):
                yield root, path


def read_text(path: Path) -> tuple[str | None, str]:
    """The UTF-8 text of ``path``, or ``(None, reason)`` when it should be skipped."""
    try:
        data = path.read_bytes()
    except OSError:
        return None, "unreadable"
    if b"\x00" in data:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    if not text.strip():
        return None, "empty"
    return text, ""


def collect_text_files(
    input_dirs: Sequence[str | Path],
    *,
    pattern: str = "*.py",
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    max_files: int | None = None,
    seed: int = 0,
) -> tuple[list[TextFile], dict[str, int]]:
    """Read the corpus: documents in a seeded random order, and skip counts by reason.

    With ``max_files``, a seeded random sample of that many readable files is kept.
    """
    paths = list(iter_files(input_dirs, pattern, exclude))
    random.Random(seed).shuffle(paths)
    files: list[TextFile] = []
    skipped: collections.Counter[str] = collections.Counter()
    for root, path in paths:
        if max_files is not None and len(files) >= max_files:
            break
        text, reason = read_text(path)
        if text is None:
            skipped[reason] += 1
            continue
        source = f"{root.name}/{path.relative_to(root).as_posix()}"
        files.append(TextFile(text=text, source=source, language=language_of(path)))
    log.info(
        "read %d files (%.1f MB) from %s; skipped %s",
        len(files),
        sum(len(f.text) for f in files) / 1e6,
        [str(d) for d in input_dirs],
        dict(skipped) or "none",
    )
    return files, dict(skipped)


def _tokenized_examples(tok: Tokenizer, files: Sequence[TextFile]) -> Iterator[dict[str, Any]]:
    """Examples for :func:`write_token_dataset`, encoded a batch of files at a time."""
    for start in range(0, len(files), _ENCODE_BATCH):
        batch = files[start : start + _ENCODE_BATCH]
        for f, tokens in zip(batch, encode_documents(tok, [f.text for f in batch]), strict=True):
            yield {"tokens": tokens, "language": f.language, "source": f.source}


def build_text_dataset(
    input_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    pattern: str = "*.py",
    vocab_size: int = 4096,
    max_files: int | None = None,
    val_fraction: float = 0.01,
    seed: int = 0,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    name: str = DEFAULT_NAME,
    overwrite: bool = False,
) -> Path:
    """Tokenize the text files under ``input_dirs`` into a dataset with train/validation splits.

    Args:
      input_dirs: folders walked recursively, e.g. ``[sysconfig.get_paths()["stdlib"]]``.
      out_dir: the dataset directory to create (see :mod:`snowjax.data.shards`).
      pattern: glob for file names.
      vocab_size: BPE vocabulary size (exact), trained on the train split only.
      max_files: keep at most this many readable files (a seeded sample), for tests.
      val_fraction: share of files in ``validation``; at least one file when > 0.
      seed: file order, sample and split assignment.
      exclude: directory names not descended into (third-party packages, caches).
      name: TFDS dataset name.
      overwrite: replace an existing dataset in ``out_dir``.

    Returns:
      ``out_dir``, holding the dataset, ``tokenizer.json`` and ``snowjax_dataset.json``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not overwrite and (Path(out_dir) / SUMMARY_FILENAME).exists():  # fail before the slow part
        raise FileExistsError(f"{out_dir} already holds a dataset; pass overwrite=True to replace it")
    files, skipped = collect_text_files(input_dirs, pattern=pattern, exclude=exclude, max_files=max_files, seed=seed)
    if not files:
        raise ValueError(f"no usable files matching {pattern!r} under {[str(d) for d in input_dirs]}")
    # at least one validation file when asked for, but never the only file
    num_val = min(max(1, round(len(files) * val_fraction)), len(files) - 1) if val_fraction > 0 else 0
    val_files, train_files = files[:num_val], files[num_val:]

    log.info("training a %d-token BPE on %d files", vocab_size, len(train_files))
    tok = train_bpe_tokenizer((f.text for f in train_files), vocab_size)
    splits = {"train": _tokenized_examples(tok, train_files)}
    if val_files:
        splits["validation"] = _tokenized_examples(tok, val_files)
    metadata = {
        "description": "text files tokenized with a byte-level BPE trained on the train split",
        "builder": "snowjax.data.text_corpus.build_text_dataset",
        "input_dirs": [str(d) for d in input_dirs],
        "pattern": pattern,
        "max_files": max_files,
        "val_fraction": val_fraction,
        "seed": seed,
        "skipped_files": skipped,
    }
    with tempfile.TemporaryDirectory(prefix="snowjax_tok_") as scratch:
        tokenizer_path = Path(scratch) / TOKENIZER_FILENAME  # write_token_dataset copies it into out_dir
        tok.save(str(tokenizer_path))
        return write_token_dataset(
            out_dir, splits, name=name, tokenizer_path=tokenizer_path, metadata=metadata, overwrite=overwrite
        )
