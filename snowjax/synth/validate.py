"""Validation of teacher replies: extract the code, then keep it only if it passes every rule.

Rules, in the order they are checked (the first that fails is the rejection reason, and every
rejection is counted by reason):

==========================  ================================================================
``empty``                   no code in the reply (nothing but whitespace)
``truncated``               the reply hit its token limit (``finish_reason`` ``length``) or its
                            code fence is never closed
``too_short`` / ``too_long``  fewer than ``min_chars`` or more than ``max_chars`` characters
``syntax_error``            Python (``python_ast`` languages) that ``ast.parse`` rejects
``near_duplicate_seed``     MinHash Jaccard with the seed text shown >= ``seed_threshold``
``contaminated``            shares an n-gram with a benchmark problem or solution
                            (:mod:`snowjax.data.decontam`)
``near_duplicate``          MinHash Jaccard >= ``minhash.threshold`` with an accepted document
                            earlier in seed order (LSH candidates, then the signature estimate)
==========================  ================================================================

The code is the longest fenced block (````` or ``~~~``) tagged with the seed's language
(aliases such as ``py``/``python3`` count), else the longest untagged block, else the longest
block, else the whole reply when it has no fence at all; documents end with one newline.
"""

from __future__ import annotations

import ast
import collections
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snowjax.config import ConfigError
from snowjax.data.dedup import MinHashConfig, MinHasher, band_keys, estimated_jaccard

REASONS = (
    "empty",
    "truncated",
    "too_short",
    "too_long",
    "syntax_error",
    "near_duplicate_seed",
    "contaminated",
    "near_duplicate",
)

# Fence info strings accepted for each language (lowercase).
FENCE_ALIASES: dict[str, frozenset[str]] = {
    "python": frozenset({"python", "py", "python3", "py3"}),
    "jupyter": frozenset({"python", "py", "python3", "ipython", "jupyter"}),
    "cpp": frozenset({"cpp", "c++", "cc", "cxx", "hpp"}),
    "c": frozenset({"c", "h"}),
    "javascript": frozenset({"javascript", "js", "jsx", "node", "mjs"}),
    "typescript": frozenset({"typescript", "ts", "tsx"}),
    "csharp": frozenset({"csharp", "cs", "c#"}),
    "go": frozenset({"go", "golang"}),
    "rust": frozenset({"rust", "rs"}),
    "ruby": frozenset({"ruby", "rb"}),
    "kotlin": frozenset({"kotlin", "kt", "kts"}),
    "shell": frozenset({"bash", "sh", "shell", "zsh", "console"}),
    "swift": frozenset({"swift"}),
}
_FENCE = re.compile(r"^[ \t]{0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)[^`]*$")


@dataclass
class ValidationConfig:
    """Which replies become documents."""

    min_chars: int = 50
    max_chars: int = 40_000
    python_ast: list[str] = field(default_factory=lambda: ["python"])  # languages checked with ast.parse
    seed_threshold: float = 0.7  # reject a copy of the seed at this MinHash Jaccard or above
    minhash: MinHashConfig = field(default_factory=MinHashConfig)  # near-dups among the documents
    decontaminate: bool = True
    humaneval: bool = True  # check against the bundled HumanEval problems
    benchmark_files: list[str] = field(default_factory=list)  # more benchmark JSONL files (MBPP+, ...)
    decontam_ngram: int = 10  # shared word n-gram length that counts as contamination
    # Keep a reply cut at max_tokens (or with an unclosed fence) as its longest prefix of whole lines
    # that passes the language check (Python: the longest that parses). For base-model teachers that
    # never close a block (the demo's tiny model); instruct teachers keep the strict default.
    keep_cut_replies: bool = False


def validate_validation(cfg: ValidationConfig, key: str = "validation") -> None:
    if cfg.min_chars < 0 or cfg.max_chars < max(cfg.min_chars, 1):
        raise ConfigError(
            f"{key}.min_chars/max_chars: need 0 <= min_chars <= max_chars, got {cfg.min_chars}, {cfg.max_chars}"
        )
    if not 0 < cfg.seed_threshold <= 1:
        raise ConfigError(f"{key}.seed_threshold: must be in (0, 1], got {cfg.seed_threshold}")
    if cfg.decontam_ngram < 1:
        raise ConfigError(f"{key}.decontam_ngram: must be >= 1, got {cfg.decontam_ngram}")


@dataclass
class Extracted:
    """The code found in a reply; ``closed`` is False for a fence that never ends."""

    code: str
    fenced: bool
    closed: bool = True


def _blocks(text: str) -> list[tuple[str, str, bool]]:
    """(info, content, closed) of every fenced block, in order."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").lower()
        body, i, closed = [], i + 1, False
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                closed = True
                i += 1
                break
            body.append(lines[i])
            i += 1
        out.append((info, "\n".join(body), closed))
    return out


def extract_code(reply: str, language: str) -> Extracted:
    """The code in ``reply`` for ``language`` (module docstring: which block wins)."""
    blocks = _blocks(reply)
    if not blocks:
        code = reply.strip("\n").rstrip()
        return Extracted(code + "\n" if code.strip() else "", fenced=False)
    aliases = FENCE_ALIASES.get(language, frozenset({language}))
    for pick in (lambda b: b[0] in aliases, lambda b: not b[0], lambda b: True):
        chosen = [b for b in blocks if pick(b)]
        if chosen:
            _, code, closed = max(chosen, key=lambda b: len(b[1]))
            return Extracted(code.strip("\n") + "\n" if code.strip() else "", fenced=True, closed=closed)
    raise AssertionError("unreachable: the last rule takes any block")


def salvage_cut_code(code: str, python: bool, max_tries: int = 200) -> str:
    """The longest prefix of whole lines of a cut-off ``code`` (its last, partial line dropped) that parses
    when ``python``; ``""`` when none does within ``max_tries`` lines."""
    lines = code.rstrip("\n").split("\n")[:-1]  # the last line was cut mid-way
    for end in range(len(lines), max(0, len(lines) - max_tries), -1):
        candidate = "\n".join(lines[:end]).rstrip()
        if not candidate.strip():
            break
        if not python or parses_as_python(candidate):
            return candidate + "\n"
    return ""


def parses_as_python(code: str) -> bool:
    """Whether ``ast.parse`` accepts ``code`` (warnings such as invalid escapes do not count)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


@dataclass
class Verdict:
    seed_id: str
    language: str
    code: str
    reason: str | None  # None: accepted
    detail: str = ""


@dataclass
class ValidationReport:
    """Counts of a validation pass: accepted and rejected by reason, overall and per language."""

    accepted: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)
    by_language: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )

    def count(self, verdict: Verdict) -> None:
        key = verdict.reason or "accepted"
        self.by_language[verdict.language][key] += 1
        if verdict.reason is None:
            self.accepted += 1
        else:
            self.rejected[verdict.reason] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": {r: self.rejected.get(r, 0) for r in REASONS},
            "by_language": {lang: dict(c) for lang, c in sorted(self.by_language.items())},
        }


class Validator:
    """Applies the rules to replies one at a time, remembering accepted documents for the near-dup rule.

    Feed replies in a fixed order (the job uses seed order), so which of two near-duplicates is
    kept does not depend on which reply arrived first.
    """

    def __init__(self, cfg: ValidationConfig, decontaminator: Any | None = None) -> None:
        self.cfg = cfg
        self.hasher = MinHasher(cfg.minhash)
        self.bands, self.rows = cfg.minhash.lsh()
        self._buckets: dict[bytes, list[int]] = collections.defaultdict(list)
        self._signatures: list[np.ndarray] = []
        self._ids: list[str] = []
        self.decontaminator = decontaminator
        if decontaminator is None and cfg.decontaminate:
            from snowjax.data.decontam import Decontaminator, load_benchmark_items

            items = load_benchmark_items(humaneval=cfg.humaneval, files=tuple(cfg.benchmark_files))
            self.decontaminator = Decontaminator(items, ngram=cfg.decontam_ngram)
        self.report = ValidationReport()

    def check(self, seed_id: str, language: str, reply: str, finish_reason: str, seed_text: str) -> Verdict:
        """The verdict on one reply; accepted documents join the near-duplicate index."""
        verdict = self._check(seed_id, language, reply, finish_reason, seed_text)
        self.report.count(verdict)
        return verdict

    def _check(self, seed_id: str, language: str, reply: str, finish_reason: str, seed_text: str) -> Verdict:
        cfg = self.cfg
        found = extract_code(reply, language)
        code = found.code

        def reject(reason: str, detail: str = "") -> Verdict:
            return Verdict(seed_id, language, code, reason, detail)

        if not code.strip():
            return reject("empty")
        if finish_reason == "length" or not found.closed:
            cut = salvage_cut_code(code, language in cfg.python_ast) if cfg.keep_cut_replies else ""
            if not cut.strip():
                return reject("truncated", "finish_reason length" if finish_reason == "length" else "unclosed fence")
            code = cut
        if len(code) < cfg.min_chars:
            return reject("too_short", f"{len(code)} chars")
        if len(code) > cfg.max_chars:
            return reject("too_long", f"{len(code)} chars")
        if language in cfg.python_ast and not parses_as_python(code):
            return reject("syntax_error")
        signature = self.hasher.signature(code)
        similarity = estimated_jaccard(signature, self.hasher.signature(seed_text))
        if similarity >= cfg.seed_threshold:
            return reject("near_duplicate_seed", f"jaccard {similarity:.2f}")
        if self.decontaminator is not None:
            match = self.decontaminator.match(code)
            if match is not None:
                return reject("contaminated", f"{match.benchmark} {match.task_id} {match.kind} ({match.method})")
        keys = band_keys(signature, self.bands, self.rows)
        for other in dict.fromkeys(i for k in keys for i in self._buckets.get(k, ())):
            similarity = estimated_jaccard(signature, self._signatures[other])
            if similarity >= cfg.minhash.threshold:
                return reject("near_duplicate", f"of {self._ids[other]} (jaccard {similarity:.2f})")
        index = len(self._signatures)
        self._signatures.append(signature)
        self._ids.append(seed_id)
        for k in keys:
            self._buckets[k].append(index)
        return Verdict(seed_id, language, code, None)

    def check_all(self, items: Iterable[tuple[str, str, str, str, str]]) -> list[Verdict]:
        """:meth:`check` over (seed id, language, reply, finish reason, seed text) tuples, in order."""
        return [self.check(*item) for item in items]
