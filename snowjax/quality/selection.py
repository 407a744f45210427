"""Phase-2 data: the top files of each language until the token budget is met, keeping the language mix.

Each language gets ``budget x`` its share of the corpus's (phase-1) tokens. Its scored
files are ranked by score (or, for the paper's ablation, put in a seeded random order) and
taken in that order until the language's budget is reached: the selection meets each
budget within one file's tokens (it stops at the first file that reaches it). A language
with fewer tokens than its budget gives all it has, and the shortfall is reported.

The selected files are tokenized with the dataset's tokenizer and written as a token
dataset (``snowjax.data.shards``) whose metadata records the budget met per language, so a
curriculum's phase 2 (``epochs: 4``) points at it. Tokens are counted as the records'
``num_tokens``: the dataset tokenizer, EOS excluded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from snowjax.data.tokenizer import encode_documents, load_tokenizer
from snowjax.quality.records import clean_content, iter_record_batches

log = logging.getLogger(__name__)

_ENCODE_BATCH = 256


@dataclass
class LanguageBudget:
    """Budget and what was selected for one language. Tokens: dataset tokenizer, EOS excluded."""

    language: str
    corpus_tokens: int  # all the language's tokens in the corpus (its phase-1 share)
    corpus_share: float
    budget: int  # budget x corpus_share
    selected_tokens: int = 0
    selected_files: int = 0
    scored_files: int = 0
    shortfall: int = 0  # budget the language could not fill (too few scored tokens)
    min_selected_score: float = float("nan")

    @property
    def selected_share(self) -> float:
        return self.selected_tokens / self.budget if self.budget else 0.0


def language_budgets(languages: np.ndarray, num_tokens: np.ndarray, budget: int) -> dict[str, LanguageBudget]:
    """Per-language budgets: ``round(budget x share)``, shares of the corpus's tokens (rows with num_tokens >= 0)."""
    valid = num_tokens >= 0
    total = int(num_tokens[valid].sum())
    if total <= 0:
        raise ValueError("the corpus has no tokens (num_tokens missing or zero in every record)")
    out = {}
    for lang in sorted(set(languages[valid].tolist())):
        tokens = int(num_tokens[valid & (languages == lang)].sum())
        share = tokens / total
        out[lang] = LanguageBudget(lang, tokens, share, round(budget * share))
    return out


def select_top_tokens_per_language(
    scores: np.ndarray,
    num_tokens: np.ndarray,
    languages: np.ndarray,
    budget: int,
    *,
    order: Literal["score", "random"] = "score",
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, LanguageBudget]]:
    """Select files per language until each language's share of ``budget`` is met.

    Args:
      scores: (N,) file scores; NaN (skipped files) are never selected.
      num_tokens: (N,) tokens per file (< 0: unknown, never selected, not in the shares).
      languages: (N,) language per file.
      budget: total tokens to select.
      order: ``score`` (highest first; ties by position) or ``random`` (seeded permutation).

    Returns:
      ``(selected (N,) bool, budgets by language)``.
    """
    scores, num_tokens, languages = np.asarray(scores), np.asarray(num_tokens), np.asarray(languages)
    budgets = language_budgets(languages, num_tokens, budget)
    selected = np.zeros(len(scores), bool)
    rng = np.random.default_rng(seed)
    for lang, b in budgets.items():
        idx = np.flatnonzero((languages == lang) & ~np.isnan(scores) & (num_tokens > 0))
        b.scored_files = len(idx)
        if order == "score":
            idx = idx[np.argsort(-scores[idx], kind="stable")]
        else:
            idx = rng.permutation(idx)
        cum = np.cumsum(num_tokens[idx])
        # the first k files whose tokens reach the budget: k - 1 fall short, k reaches it
        k = int(np.searchsorted(cum, b.budget, side="left")) + 1 if b.budget > 0 else 0
        k = min(k, len(idx))
        chosen = idx[:k]
        selected[chosen] = True
        b.selected_files = k
        b.selected_tokens = int(cum[k - 1]) if k else 0
        b.shortfall = max(0, b.budget - b.selected_tokens)
        b.min_selected_score = float(scores[chosen].min()) if k else float("nan")
        if b.shortfall:
            log.warning(
                "%s: budget %d tokens but only %d scored tokens: short by %d",
                lang,
                b.budget,
                b.selected_tokens,
                b.shortfall,
            )
    return selected, budgets


SELECTED_FILES = "files.parquet"  # the selected file records with their scores (phase-3 seeds)
_SELECTED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("language", pa.string()),
        ("repo", pa.string()),
        ("path", pa.string()),
        ("num_tokens", pa.int64()),
        ("score", pa.float64()),
        ("content", pa.string()),
    ]
)


class _SelectedFilesWriter:
    """Streams the selected records (with ``score``) to one Parquet file, a row group per batch."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_suffix(".parquet.tmp")
        self.writer = pq.ParquetWriter(self.tmp, _SELECTED_SCHEMA)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.writer.write_table(pa.Table.from_pylist(rows, schema=_SELECTED_SCHEMA))

    def close(self) -> None:
        self.writer.close()
        self.tmp.replace(self.path)


def _selected_examples(
    input_files: Sequence[Path],
    rows_by_shard: dict[int, dict[int, float]],
    tokenizer_path: Path,
    stats: dict[str, int],
    files_out: _SelectedFilesWriter,
) -> Iterator[dict[str, Any]]:
    """The selected records, tokenized, in input order: ``{"tokens", "language", "source": id}``.

    ``rows_by_shard``: shard -> {row: score}. Each selected record also goes to ``files_out``.
    """
    tok = load_tokenizer(tokenizer_path)
    pending: list[dict[str, Any]] = []

    def flush() -> Iterator[dict[str, Any]]:
        encoded = encode_documents(tok, [p["content"] for p in pending])
        for p, tokens in zip(pending, encoded, strict=True):
            if p["num_tokens"] >= 0 and len(tokens) - 1 != p["num_tokens"]:
                stats["token_count_mismatch"] = stats.get("token_count_mismatch", 0) + 1
            yield {"tokens": tokens, "language": p["language"], "source": p["id"]}
        files_out.write(pending)
        pending.clear()

    for shard, path in enumerate(input_files):
        wanted = rows_by_shard.get(shard)
        if not wanted:
            continue
        row = 0
        for batch in iter_record_batches(path, columns=["id", "content", "language", "num_tokens", "repo", "path"]):
            for rec in batch:
                if row in wanted:
                    text, _ = clean_content(rec.get("content"))
                    if text is not None:  # scored records had valid content; re-checked all the same
                        n = rec.get("num_tokens")
                        pending.append(
                            {
                                "content": text,
                                "language": str(rec.get("language") or "unknown"),
                                "id": str(rec.get("id")),
                                "repo": str(rec.get("repo") or ""),
                                "path": str(rec.get("path") or ""),
                                "num_tokens": int(n) if n is not None else -1,
                                "score": float(wanted[row]),
                            }
                        )
                row += 1
                if len(pending) >= _ENCODE_BATCH:
                    yield from flush()
    if pending:
        yield from flush()


def write_selection(
    out_dir: str | Path,
    input_files: Sequence[Path],
    shard: np.ndarray,
    row: np.ndarray,
    scores: np.ndarray,
    selected: np.ndarray,
    budgets: dict[str, LanguageBudget],
    tokenizer_path: str | Path,
    *,
    name: str,
    metadata: dict[str, Any],
    num_shards: int | None = None,
) -> Path:
    """Write the selected files (``shard``/``row``: their place in ``input_files``) as a token dataset.

    Beside it, ``files.parquet`` holds the selected file records with their ``score`` (id,
    language, repo, path, num_tokens, score, content): the seeds of phase-3 synthesis.

    The dataset's ``snowjax_dataset.json`` metadata gets ``budget_per_language`` (budget,
    selected tokens and files, shortfall per language) beside ``metadata``.
    """
    from snowjax.data.shards import write_token_dataset

    rows_by_shard: dict[int, dict[int, float]] = {}
    for s, r, v in zip(shard[selected].tolist(), row[selected].tolist(), scores[selected].tolist(), strict=True):
        rows_by_shard.setdefault(int(s), {})[int(r)] = v
    stats: dict[str, int] = {}
    meta = {
        **metadata,
        "budget_per_language": {k: {**asdict(v), "selected_share": v.selected_share} for k, v in budgets.items()},
        "tokens_counted": "dataset tokenizer, EOS excluded",
        "write_stats": stats,  # filled while writing (the dict is serialised after the examples)
    }
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    files_out = _SelectedFilesWriter(Path(out_dir) / SELECTED_FILES)
    examples = _selected_examples(input_files, rows_by_shard, Path(tokenizer_path), stats, files_out)
    out = write_token_dataset(
        out_dir,
        {"train": examples},
        name=name,
        tokenizer_path=tokenizer_path,
        metadata=meta,
        num_shards=num_shards,
        overwrite=True,
    )
    files_out.close()
    if stats.get("token_count_mismatch"):
        log.warning(
            "%d selected files tokenized to a length other than their num_tokens (was the corpus tokenized "
            "with another tokenizer.json?)",
            stats["token_count_mismatch"],
        )
    return out
