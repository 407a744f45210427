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


def _stdlib_sources(limit: int) -> list[str]:
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.glob("*.py") if p.is_file())[:limit]
    return [p.read_bytes().decode("utf-8", "replace") for p in paths]


def _hf_ids(tok, texts):
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


@pytest.fixture(scope="module")
def code_tok():
    """A 2000-token BPE trained on real code, so that pieces merge deeply."""
    return T.train_bpe_tokenizer(_stdlib_sources(60), vocab_size=2000, min_frequency=2)


def test_piece_cache_is_exact_on_real_code_and_hostile_ascii(code_tok):
    assert T._piece_cache(code_tok) is not None  # the fast path is what this test checks
    rng = np.random.default_rng(0)
    alphabet = [chr(c) for c in range(128)]
    hostile = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 300)))) for _ in range(200)] + [
        "it's I'M we'll they'd you've 's 't 're\n",
        "  \t \n\n\r\n   x\x0b\x0c\x1c\x1d\x1e\x1f\x7f\x00y   \n",
        "a1b2 3.14e-10 0x1F __init__ ===== ;;;\\\\ <|endoftext|><file_sep>",
        "    ",
        "",
        "trailing spaces   ",
    ]
    texts = _stdlib_sources(200) + hostile
    texts = [t for t in texts if t.isascii()]
    got = T.encode_ids_batch(code_tok, texts)
    again = T.encode_ids_batch(code_tok, texts)  # now from remembered pieces
    for g, a, want in zip(got, again, _hf_ids(code_tok, texts), strict=True):
        assert g.dtype == np.int32
        assert g.tolist() == want and a.tolist() == want


def test_piece_cache_mixed_batch_and_fallbacks(code_tok, tok, monkeypatch):
    texts = ["x = 'é'\n", "import os\n", "🐍" * 3, "def f():\n    return 1\n"]
    for ids, want in zip(T.encode_ids_batch(code_tok, texts), _hf_ids(code_tok, texts), strict=True):
        assert ids.tolist() == want  # non-ASCII texts go to tokenizers, ASCII ones to the cache
    monkeypatch.setattr(T._PieceCache, "MAX_PIECES", 3)  # memory cleared as it fills: same ids
    for ids, want in zip(T.encode_ids_batch(tok, texts), _hf_ids(tok, texts), strict=True):
        assert ids.tolist() == want
    # a pre-tokenizer other than plain ByteLevel (StarCoder's splits digits first): tokenizers only
    from tokenizers import Tokenizer, pre_tokenizers

    other = Tokenizer.from_str(code_tok.to_str())
    other.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    other.encode_special_tokens = True
    assert T._piece_cache(other) is None
    texts = ["x = 12345\n", "y = 'abc'\n"]
    assert [i.tolist() for i in T.encode_ids_batch(other, texts)] == _hf_ids(other, texts)
    # special strings parsed as special tokens (encode_special_tokens off): tokenizers only
    other.encode_special_tokens = False
    assert T._piece_cache(other) is None
    assert T.encode_ids_batch(other, ["<file_sep>"])[0].tolist() == [T.FILE_SEP_ID]
