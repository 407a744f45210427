"""Repository documents: StarCoder2 text format, seeded order, metadata coin, split assignment."""

from __future__ import annotations

import numpy as np
import pytest

from snowjax.data import documents as D
from snowjax.data import tokenizer as T

FILES = [("pkg/b.py", "import os\n"), ("a.py", "def a():\n    return '<file_sep>'\n"), ("pkg/c.py", "x = 1\n")]


@pytest.fixture(scope="module")
def tok():
    return T.train_bpe_tokenizer([c for _, c in FILES] * 20, vocab_size=300)


def _encode(tok):
    return lambda text: tok.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_document_decodes_to_starcoder2_text(tok, prob):
    files = [(p, _encode(tok)(c)) for p, c in FILES]
    ids = D.repository_document("own/repo", files, _encode(tok), seed=3, metadata_probability=prob)
    text = D.repository_document_text("own/repo", FILES, seed=3, metadata_probability=prob)
    assert ids.dtype == np.int32 and ids[-1] == T.EOS_ID
    assert T.decode(tok, ids) == text
    order = D.file_order([p for p, _ in FILES], "own/repo", 3)
    if prob == 1.0:
        assert text.startswith("<repo_name>own/repo<file_sep>")
        assert ids[0] == T.REPO_NAME_ID
        want = "".join(f"<file_sep>{FILES[i][0]}\n{FILES[i][1]}" for i in order)
        assert text == "<repo_name>own/repo" + want + "<|endoftext|>"
    else:
        assert text == "".join(f"<file_sep>{FILES[i][1]}" for i in order) + "<|endoftext|>"
    # separators are inserted by id; the "<file_sep>" string inside a.py's code is plain bytes
    assert (ids == T.FILE_SEP_ID).sum() == len(FILES)


def test_order_is_seeded_and_independent_of_arrival(tok):
    enc = _encode(tok)
    files = [(p, enc(c)) for p, c in FILES]
    a = D.repository_document("r", files, enc, seed=0, metadata_probability=1.0)
    b = D.repository_document("r", files[::-1], enc, seed=0, metadata_probability=1.0)
    np.testing.assert_array_equal(a, b)
    orders = {tuple(D.file_order([f"f{i}.py" for i in range(8)], "r", s)) for s in range(10)}
    assert len(orders) > 1  # the seed changes the order


def test_metadata_coin_and_validation_share():
    repos = [f"owner/repo{i}" for i in range(4000)]
    kept = sum(D.keeps_metadata(r, 0, 0.5) for r in repos) / len(repos)
    assert 0.46 < kept < 0.54
    val = sum(D.validation_repo(r, "python", 0, 0.1) for r in repos) / len(repos)
    assert 0.08 < val < 0.12
    assert not any(D.validation_repo(r, "python", 0, 0.0) for r in repos)
    assert D.validation_repo("x/y", "go", 1, 0.5) == D.validation_repo("x/y", "go", 1, 0.5)


def test_file_document():
    np.testing.assert_array_equal(D.file_document([5, 6]), np.array([5, 6, T.EOS_ID], np.int32))
