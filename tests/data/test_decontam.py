"""Decontamination against HumanEval (bundled) and benchmark files in their published formats."""

from __future__ import annotations

import inspect
import json
import pickle
from pathlib import Path

import pytest

from snowjax.data import decontam
from snowjax.data.decontam import BenchmarkItem, Decontaminator, load_benchmark_items


@pytest.fixture(scope="module")
def items() -> decontam.BenchmarkItems:
    return load_benchmark_items()


@pytest.fixture(scope="module")
def checker(items: decontam.BenchmarkItems) -> Decontaminator:
    return Decontaminator(items)


def _item(items: list[BenchmarkItem], task_id: str, kind: str) -> str:
    return next(i.text for i in items if i.task_id == task_id and i.kind == kind)


def test_humaneval_items_are_loaded(items: decontam.BenchmarkItems) -> None:
    assert {i.kind for i in items} == {"prompt", "solution", "test"}
    assert len({i.task_id for i in items}) == 164 and len(items) == 3 * 164
    assert sum(items.skipped.values()) == 0


def test_file_embedding_prompt_and_solution_is_removed(items: list[BenchmarkItem], checker: Decontaminator) -> None:
    prompt, solution = _item(items, "HumanEval/12", "prompt"), _item(items, "HumanEval/12", "solution")
    leaked = (
        "# my utils\nimport sys\n\n"
        + (prompt + solution).replace("    ", "\t")
        + "\n\nif __name__ == '__main__':\n    main()\n"
    )
    match = checker.match(leaked)
    assert match is not None and (match.benchmark, match.task_id, match.method) == (
        "HumanEval",
        "HumanEval/12",
        "substring",
    )
    # The canonical solution alone, re-wrapped, still matches.
    solution_only = "def longest(strings):\n" + solution.replace("\n", "\n\n")
    match = checker.match(solution_only)
    assert match is not None and (match.task_id, match.kind) == ("HumanEval/12", "solution")


def test_shared_ten_gram_is_removed(items: list[BenchmarkItem], checker: Decontaminator) -> None:
    words = _item(items, "HumanEval/0", "prompt").split()
    partial = "def similar(values):\n    " + " ".join(words[8:20]) + "\n    pass\n"  # 12 words of the prompt
    match = checker.match(partial)
    assert match is not None and (match.task_id, match.method) == ("HumanEval/0", "ngram")
    assert len(match.snippet.split()) == 10


def test_unrelated_and_short_common_lines_are_kept(checker: Decontaminator) -> None:
    assert checker.match(Path(inspect.__file__).read_text()) is None
    common = "def f(numbers):\n    result = []\n    return result\n\n\nif __name__ == '__main__':\n    f([1, 2, 3])\n"
    assert checker.match(common) is None  # shares lines like "return result" with HumanEval solutions
    assert checker.match("0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12") is None  # number lists are not evidence
    assert checker.match("") is None


def test_benchmark_files_in_published_formats(tmp_path: Path) -> None:
    mbpp = tmp_path / "mbpp.jsonl"
    rows = [
        {
            "task_id": 11,
            "text": "Write a python function to remove first and last occurrence of a given character from the string.",
            "code": "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): \r\n"
            "            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    return s ",
            "test_list": ['assert remove_Occ("hello","l") == "heo"'],
            "test_setup_code": "",
            "challenge_test_list": [],
        }
    ]
    mbpp.write_text(json.dumps(rows[0]) + "\n{not json\n" + json.dumps({"task_id": 12}) + "\n")
    bcb = tmp_path / "bcb.jsonl"
    bcb.write_text(
        json.dumps(
            {
                "task_id": "BigCodeBench/0",
                "complete_prompt": "import itertools\n\ndef task_func(numbers=[1, 2]):\n"
                '    """Sum of all permutations."""\n',
                "canonical_solution": "    return sum(sum(p) for p in itertools.permutations(numbers))\n",
                "test": "import unittest\n\nclass TestCases(unittest.TestCase):\n    def test_one(self):\n"
                "        self.assertEqual(task_func([1, 2]), 6)\n",
                "entry_point": "task_func",
            }
        )
        + "\n"
    )
    loaded = load_benchmark_items(humaneval=False, files=[mbpp, f"bigcodebench={bcb}"])
    assert sorted((i.benchmark, i.kind) for i in loaded) == [
        ("BigCodeBench", "prompt"), ("BigCodeBench", "solution"), ("BigCodeBench", "test"),
        ("MBPP", "prompt"), ("MBPP", "solution"), ("MBPP", "test"),
    ]  # fmt: skip
    assert sum(loaded.skipped.values()) == 2 and len(loaded.errors) == 2  # bad JSON, missing fields
    mbpp_prompt = next(i.text for i in loaded if i.benchmark == "MBPP" and i.kind == "prompt")
    assert mbpp_prompt == rows[0]["text"]  # the task text, not the eval prompt built around it
    bcb_test = next(i.text for i in loaded if i.benchmark == "BigCodeBench" and i.kind == "test")
    assert bcb_test.startswith("import unittest")  # without the eval harness's prefix

    checker = Decontaminator(loaded)
    leaked = "# solutions\n" + rows[0]["code"].replace("\r\n", "\n") + "\n"
    match = checker.match(leaked)
    assert match is not None and (match.benchmark, match.task_id, match.kind) == ("MBPP", "Mbpp/11", "solution")
    with pytest.raises(FileNotFoundError):
        load_benchmark_items(humaneval=False, files=[tmp_path / "missing.jsonl"])


def test_decontaminator_pickles(items: list[BenchmarkItem], checker: Decontaminator) -> None:
    clone = pickle.loads(pickle.dumps(checker))
    leaked = _item(items, "HumanEval/99", "solution")
    assert clone.match(leaked) == checker.match(leaked) is not None
    with pytest.raises(ValueError, match="kinds"):
        Decontaminator(items, kinds=["answer"])


def test_pickles_as_its_items_and_rebuilds_once_per_process(checker: Decontaminator) -> None:
    import numpy as np

    decontam._REBUILT.clear()
    decontaminator = Decontaminator(checker.items)
    blob = pickle.dumps(decontaminator)
    assert len(blob) < 400_000  # the items (~200 kB for HumanEval), not the automaton and n-gram tables
    assert pickle.loads(blob) is decontaminator  # this process built it already
    decontam._REBUILT.clear()  # as in a fresh Beam worker: rebuilt from the items, once
    first, second = pickle.loads(blob), pickle.loads(blob)
    assert first is second and first is not decontaminator
    np.testing.assert_array_equal(first.ngram_keys, decontaminator.ngram_keys)
    leak = "x = 1\n" + next(i.text for i in decontaminator.items if i.kind == "solution")
    assert first.match(leak) == decontaminator.match(leak) and first.match(leak) is not None
