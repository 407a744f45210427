"""Building a dataset from folders of text files: skipping, sources, tokens equal to the files' encodings."""

from __future__ import annotations

import json

import numpy as np

from snowjax.data.shards import SUMMARY_FILENAME, open_token_source
from snowjax.data.text_corpus import build_text_dataset
from snowjax.data.tokenizer import encode_document, load_tokenizer


def test_tokens_are_the_encoded_files(stdlib_dataset, stdlib_root):
    tok = load_tokenizer(stdlib_dataset)
    source = open_token_source(stdlib_dataset, "train")
    for i in range(0, len(source), 5):
        ex = source[i]
        assert ex["tokens"].dtype == np.int32
        assert ex["language"] == b"python"
        rel = ex["source"].decode().split("/", 1)[1]
        text = (stdlib_root / rel).read_text(encoding="utf-8")
        np.testing.assert_array_equal(ex["tokens"], encode_document(tok, text))


def test_text_corpus_skips_bad_files(tmp_path):
    src = tmp_path / "src"
    (src / "pkg" / "site-packages").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("def a():\n    return 1\n")
    (src / "pkg" / "b.py").write_text("import os\nprint(os.sep)\n")
    (src / "c.py").write_text("x = 'ü'\n")
    (src / "empty.py").write_text("  \n")
    (src / "binary.py").write_bytes(b"x = 1\x00\x01")
    (src / "latin1.py").write_bytes("y = 'é'\n".encode("latin-1"))
    (src / "pkg" / "site-packages" / "dep.py").write_text("ignored = True\n")
    (src / "notes.txt").write_text("not matched\n")
    out = build_text_dataset([src], tmp_path / "ds", vocab_size=300, val_fraction=0.3)
    summary = json.loads((out / SUMMARY_FILENAME).read_text())
    assert summary["metadata"]["skipped_files"] == {"empty": 1, "binary": 1, "invalid_utf8": 1}
    splits = summary["splits"]
    assert splits["train"]["num_examples"] == 2 and splits["validation"]["num_examples"] == 1
    sources = {
        open_token_source(out, s)[i]["source"].decode() for s in splits for i in range(splits[s]["num_examples"])
    }
    assert sources == {"src/pkg/a.py", "src/pkg/b.py", "src/c.py"}
