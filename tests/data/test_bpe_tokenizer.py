"""Byte-level BPE: fixed special ids, exact vocab size, lossless round trip."""

from __future__ import annotations

import numpy as np
import pytest

from snowjax.data import tokenizer as T


@pytest.fixture(scope="module")
def tok(stdlib_dataset):
    return T.load_tokenizer(stdlib_dataset)


def test_special_ids_and_vocab_size(tok):
    assert [tok.token_to_id(s) for s in T.SPECIAL_TOKENS] == list(range(8))
    assert (T.EOS_ID, T.PAD_ID, T.REPO_NAME_ID, T.FILE_SEP_ID) == (0, 1, 2, 3)
    assert tok.get_vocab_size() == 512


def test_round_trip_and_eos(tok):
    text = "def f(x):\n\treturn x  # héllo 🐍 \x7f\r\n    \n" + "<|endoftext|> <pad> <file_sep>"
    ids = T.encode_document(tok, text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids[-1] == T.EOS_ID
    # special strings inside text are ordinary bytes: the only special id is the appended EOS
    assert not np.isin(ids[:-1], [0, 1, 2, 3]).any()
    assert T.decode(tok, ids[:-1]) == text
    assert T.decode(tok, ids) == text + T.EOS_TOKEN


def test_batch_encoding_matches_single(tok):
    texts = ["import os\n", "x = 1\n" * 50, "é"]
    for a, b in zip(T.encode_documents(tok, texts), [T.encode_document(tok, t) for t in texts], strict=True):
        np.testing.assert_array_equal(a, b)


def test_exact_vocab_size_on_tiny_corpus():
    tok = T.train_bpe_tokenizer(["ab ab ab"], vocab_size=300)
    assert tok.get_vocab_size() == 300
    assert T.decode(tok, T.encode_document(tok, "abc")[:-1]) == "abc"
    assert tok.token_to_id(T.EOS_TOKEN) == 0


def test_vocab_too_small_and_bad_file(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        T.train_bpe_tokenizer(["x"], vocab_size=100)
    with pytest.raises(FileNotFoundError):
        T.load_tokenizer(tmp_path)


def test_fast_batch_ids_equal_encode(tok):
    texts = ["def f(x):\n    return x  # é 🐍\n", "", "<file_sep> literal\n" * 3]
    for ids, text in zip(T.encode_ids_batch(tok, texts), texts, strict=True):
        assert ids.dtype == np.int32
        np.testing.assert_array_equal(ids, tok.encode(text, add_special_tokens=False).ids)
