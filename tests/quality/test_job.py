"""`snowjax data annotate` end to end on a small curated corpus (tiny random BERT, heuristic labels)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from snowjax.cli import main
from snowjax.data.shards import open_token_source, read_dataset_summary
from snowjax.data.tokenizer import load_tokenizer
from snowjax.quality.labels import is_heuristic_positive


def test_annotate_cli_trains_scores_selects_reports_and_resumes(curated_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "quality"
    args = [
        "data",
        "annotate",
        "configs/quality/local.yaml",
        f"input={curated_dir}",
        f"out_dir={out}",
        f"encoder.path={tiny_bert_dir}",
        "encoder.window_tokens=64",
        "encoder.buckets=[32, 64]",
        "encoder.batch_size=16",
        "head.steps=50",
        "selection.budget=20000",
        "report_examples=1",
    ]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert "heuristic" in report["labels"]["source"]
    assert 0.0 <= report["head"]["held_out_roc_auc"] <= 1.0
    assert report["scores"]["counts"]["empty"] == 1 and report["scores"]["scored_shards"] == [0, 1, 2]
    for png in ("roc.png", "scores_by_language.png", "budget.png"):
        assert (out / png).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "held-out ROC-AUC" in md and "## Selection: top" in md and "## Selection: random" in md

    for kind in ("top", "random"):
        summary = read_dataset_summary(out / kind)
        per_lang = summary["metadata"]["budget_per_language"]
        assert set(per_lang) == {"python", "xml", "json"}
        assert sum(b["budget"] for b in per_lang.values()) == 20000
        source = open_token_source(out / kind, "train")
        assert len(source) == report["selection"][kind]["selected_files"]
        # tokens were written with the dataset's tokenizer: each document = num_tokens + EOS
        got = sum(len(source[i]["tokens"]) - 1 for i in range(len(source)))
        assert got == report["selection"][kind]["selected_tokens"]
        for b in per_lang.values():
            assert b["selected_tokens"] >= b["budget"] or b["shortfall"] > 0
        # the selected records with their scores, in the dataset's order (phase-3 seeds read them)
        files = pq.read_table(out / kind / "files.parquet").to_pylist()
        assert [f["id"] for f in files] == [bytes(source[i]["source"]).decode() for i in range(len(source))]
        assert all(f["content"] and np.isfinite(f["score"]) for f in files)
        assert sum(f["num_tokens"] for f in files) == report["selection"][kind]["selected_tokens"]
    tok = load_tokenizer(out / "top")
    first = open_token_source(out / "top", "train")[0]
    assert tok.decode(first["tokens"][:-1].tolist())  # decodes to the file's text

    # A second run resumes: the head is reused and no shard is scored again.
    assert main(args) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["scores"]["resumed_shards"] == [0, 1, 2] and again["scores"]["scored_shards"] == []
    assert again["selection"]["top"]["selected_tokens"] == report["selection"]["top"]["selected_tokens"]


def test_bad_config_is_a_config_error(curated_dir, tmp_path):
    assert main(["data", "annotate", f"input={curated_dir}", "encoder.window_tokens=600"]) == 2
    assert main(["data", "annotate", f"input={tmp_path}"]) == 2  # no files/*.parquet


def test_heuristic_rule():
    documented = '"""Helpers."""\n\n\ndef f(x):\n    # why: x is never negative\n    return x\n' * 8
    undocumented = "x = 1\ny = 2\n" * 40
    assert is_heuristic_positive(documented, 200)
    assert not is_heuristic_positive(undocumented, 200)
    assert not is_heuristic_positive(documented, 10)  # too short
    assert not is_heuristic_positive(documented + "z" * 400 + "\n", 300)  # a minified-looking line
