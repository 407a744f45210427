"""The on-disk dataset: TFDS ArrayRecord shards, snowjax_dataset.json, tokenizer copy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from snowjax.data.shards import SUMMARY_FILENAME, find_tfds_dir, open_token_source, write_token_dataset
from snowjax.data.tokenizer import load_tokenizer


def test_layout_and_exact_counts(stdlib_dataset):
    summary = json.loads((stdlib_dataset / SUMMARY_FILENAME).read_text())
    assert (stdlib_dataset / "tokenizer.json").is_file()
    assert summary["vocab_size"] == 512
    assert find_tfds_dir(stdlib_dataset) == stdlib_dataset / "snowjax_tokens" / "1.0.0"
    total = 0
    for split in ("train", "validation"):
        source = open_token_source(stdlib_dataset, split)
        lengths = [len(source[i]["tokens"]) for i in range(len(source))]
        stats = summary["splits"][split]
        assert stats["num_examples"] == len(source) > 0
        assert stats["num_tokens"] == sum(lengths)
        assert stats["num_target_tokens"] == sum(n - 1 for n in lengths)
        assert stats["max_example_tokens"] == max(lengths)
        assert stats["languages"]["python"]["num_tokens"] == sum(lengths)
        total += len(source)
    assert total == summary["metadata"]["max_files"]


def test_order_kept_and_malformed_skipped(tmp_path, synthetic_dataset, synthetic_docs):
    source = open_token_source(synthetic_dataset, "train")
    for i, doc in enumerate(synthetic_docs):
        np.testing.assert_array_equal(source[i]["tokens"], doc)
        assert source[i]["source"] == f"doc{i}".encode()

    good = {"tokens": [5, 6, 7], "language": "c", "source": "a.c"}
    bad = [
        {"tokens": [], "language": "c", "source": "empty"},
        {"tokens": [[1, 2]], "language": "c", "source": "2d"},
        {"tokens": [1.5], "language": "c", "source": "float"},
        {"tokens": [-1], "language": "c", "source": "negative"},
        {"tokens": [1]},
        "not a dict",
    ]
    out = write_token_dataset(tmp_path / "ds", {"train": [good, *bad, good]}, metadata={"stage": "test"})
    summary = json.loads((out / SUMMARY_FILENAME).read_text())
    assert summary["splits"]["train"]["num_examples"] == 2
    assert summary["splits"]["train"]["num_skipped"] == len(bad)
    assert summary["splits"]["train"]["num_tokens"] == 6
    assert summary["metadata"] == {"stage": "test"}
    assert len(open_token_source(out, "train")) == 2

    with pytest.raises(FileExistsError):
        write_token_dataset(tmp_path / "ds", {"train": [good]})
    write_token_dataset(tmp_path / "ds", {"train": [good]}, overwrite=True)
    assert len(open_token_source(tmp_path / "ds", "train")) == 1


def test_out_of_vocab_ids_skipped(tmp_path, stdlib_dataset):
    examples = [
        {"tokens": [3, 511], "language": "py", "source": "ok"},
        {"tokens": [512], "language": "py", "source": "x"},
    ]
    out = write_token_dataset(tmp_path / "ds", {"train": examples}, tokenizer_path=stdlib_dataset / "tokenizer.json")
    summary = json.loads((out / SUMMARY_FILENAME).read_text())
    assert summary["splits"]["train"]["num_skipped"] == 1
    assert load_tokenizer(out).get_vocab_size() == 512


def test_missing_dataset_and_split(tmp_path, synthetic_dataset):
    with pytest.raises(FileNotFoundError):
        open_token_source(tmp_path / "nothing", "train")
    with pytest.raises(KeyError, match="test"):
        open_token_source(synthetic_dataset, "test")
