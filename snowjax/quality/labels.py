"""Labelled examples for the annotator head: real label files, or the offline heuristic.

Real labels (the paper's set-up): ``labels.positives`` names JSONL / Parquet files of
high-quality code files and instruction samples (records with ``content`` and optionally
``language``); ``labels.negatives`` names random phase-1 documents, or is left empty to
draw them at random from the input corpus.

Offline heuristic (the embedded default, because no hqcode set ships offline). It is a
stand-in, not the paper's signal: it teaches the head "documented, well-formed code of
moderate length", nothing more. Over the input corpus, a file is a **positive** when

- at least :data:`MIN_DOC_LINES` of its non-blank lines are comments or docstrings
  (``#``, ``//``, ``/*``, ``*``, ``--``, ``<!--``, or inside a triple-quoted string), and
  at most :data:`MAX_DOC_LINES` (a file of only comments is not code);
- it defines something (a function, class, struct, ...) or is a test file;
- it has :data:`MIN_TOKENS` to :data:`MAX_TOKENS` tokens and no line over
  :data:`MAX_LINE_CHARS` characters (not minified or generated);

and **negatives** are random input files that are not positives. Both classes are
seeded samples of at most ``labels.max_per_class`` files. The code path after this is
the one real labels take.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snowjax.quality.config import LabelsConfig
from snowjax.quality.records import clean_content, expand_paths, iter_record_batches

log = logging.getLogger(__name__)

MIN_DOC_LINES = 0.10  # share of non-blank lines that are comments / docstrings
MAX_DOC_LINES = 0.70
MIN_TOKENS = 64
MAX_TOKENS = 8192
MAX_LINE_CHARS = 300

HEURISTIC_DESCRIPTION = (
    "offline heuristic over the input corpus (no hqcode set offline): positives are files with "
    f"{MIN_DOC_LINES:.0%}-{MAX_DOC_LINES:.0%} comment/docstring lines that define a function/class "
    f"(or are tests), {MIN_TOKENS}-{MAX_TOKENS} tokens and no line over {MAX_LINE_CHARS} characters; "
    "negatives are random other input files. It measures 'documented, well-formed code', "
    "not the paper's high-quality-code signal."
)

_COMMENT_PREFIXES = ("#", "//", "/*", "*", "--", "<!--", ";;", "%")
_DEFINES = re.compile(
    r"^\s*(def|class|async def|function|func|fn|pub fn|struct|impl|interface|module|package|"
    r"public|private|protected|static|void|int|template|namespace|sub|proc)\b",
    re.MULTILINE,
)
_TRIPLE = re.compile(r'"""|\'\'\'')


@dataclass
class LabelledSet:
    """Texts with 0/1 labels, in a seeded order."""

    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    source: str = ""  # how the labels were made (goes into the report)
    skipped: dict[str, int] = field(default_factory=dict)  # records without usable content, by reason

    def add(self, text: str, label: int, language: str) -> None:
        self.texts.append(text)
        self.labels.append(label)
        self.languages.append(language)


def doc_line_share(text: str) -> float:
    """Share of non-blank lines that are comments or inside / opening a triple-quoted string."""
    in_doc = False
    doc = total = 0
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        total += 1
        quotes = len(_TRIPLE.findall(s))
        if in_doc or quotes or s.startswith(_COMMENT_PREFIXES):
            doc += 1
        if quotes % 2:
            in_doc = not in_doc
    return doc / total if total else 0.0


def is_heuristic_positive(text: str, num_tokens: int, path: str = "") -> bool:
    """The offline positive rule (module docstring) for one file."""
    if not MIN_TOKENS <= num_tokens <= MAX_TOKENS:
        return False
    if any(len(line) > MAX_LINE_CHARS for line in text.splitlines()):
        return False
    if not MIN_DOC_LINES <= doc_line_share(text) <= MAX_DOC_LINES:
        return False
    name = Path(path).name.lower()
    return bool(_DEFINES.search(text)) or name.startswith("test") or "_test." in name


class _Reservoir:
    """A seeded uniform sample of at most ``k`` items from a stream."""

    def __init__(self, k: int, rng: np.random.Generator):
        self.k, self.rng, self.seen, self.items = k, rng, 0, []

    def offer(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append(item)
        else:
            j = int(self.rng.integers(0, self.seen))
            if j < self.k:
                self.items[j] = item


def _iter_texts(files: Iterable[Path], skipped: dict[str, int]) -> Iterable[tuple[str, dict[str, Any]]]:
    for path in files:
        for batch in iter_record_batches(path, columns=["content", "language", "num_tokens", "path"]):
            for rec in batch:
                text, reason = clean_content(rec.get("content"))
                if text is None:
                    skipped[reason] = skipped.get(reason, 0) + 1
                    continue
                yield text, rec


def build_labelled_set(cfg: LabelsConfig, input_files: Sequence[Path]) -> LabelledSet:
    """Positives and negatives per ``cfg`` (real label files, or the heuristic over ``input_files``).

    Raises:
      ValueError: a class ends up empty.
    """
    rng = np.random.default_rng(cfg.seed)
    skipped: dict[str, int] = {}
    pos, neg = _Reservoir(cfg.max_per_class, rng), _Reservoir(cfg.max_per_class, rng)
    if cfg.positives:
        source = f"label files: positives {cfg.positives}, negatives {cfg.negatives or 'random input files'}"
        for text, rec in _iter_texts(expand_paths(cfg.positives), skipped):
            pos.offer((text, str(rec.get("language") or "unknown")))
        negative_files = expand_paths(cfg.negatives) if cfg.negatives else list(input_files)
        for text, rec in _iter_texts(negative_files, skipped):
            neg.offer((text, str(rec.get("language") or "unknown")))
    else:
        source = HEURISTIC_DESCRIPTION
        for text, rec in _iter_texts(input_files, skipped):
            num_tokens = rec.get("num_tokens")
            num_tokens = int(num_tokens) if num_tokens is not None else len(text) // 4  # ~4 chars a token
            good = is_heuristic_positive(text, num_tokens, str(rec.get("path") or ""))
            (pos if good else neg).offer((text, str(rec.get("language") or "unknown")))
    if not pos.items or not neg.items:
        raise ValueError(
            f"labels: {len(pos.items)} positives and {len(neg.items)} negatives; the head needs both ({source})"
        )
    out = LabelledSet(source=source, skipped=skipped)
    items = [(t, 1, lang) for t, lang in pos.items] + [(t, 0, lang) for t, lang in neg.items]
    for i in rng.permutation(len(items)):
        out.add(*items[i])
    log.info(
        "labelled set: %d positives (of %d seen), %d negatives (of %d seen); skipped %s",
        len(pos.items),
        pos.seen,
        len(neg.items),
        neg.seen,
        skipped or "none",
    )
    return out
