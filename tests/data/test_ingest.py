"""Ingest: every good file becomes a record, every bad item is counted by reason, nothing crashes."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from snowjax.data.ingest import (
    Dropped,
    IngestLimits,
    IngestSource,
    detect_license,
    make_record,
    plan_units,
    read_unit,
    record_id,
)
from snowjax.data.languages import language_from_path

LIMITS = IngestLimits(max_file_bytes=10_000)
GOOD = "def f(x):\n    return x + 1\n"


def _ingest(source: IngestSource) -> tuple[list[dict], Counter]:
    units, drops = plan_units(source)
    records, reasons = [], Counter(drops)
    for unit in units:
        for item in read_unit(unit, LIMITS):
            if isinstance(item, Dropped):
                reasons[item.reason] += 1
            else:
                records.append(item)
    return records, reasons


def test_languages_by_extension():
    assert language_from_path("a/b/x.PY") == "python"
    assert language_from_path("x.hpp") == "cpp" and language_from_path("x.h") == "c"
    assert language_from_path("nb.ipynb") == "jupyter" and language_from_path("x.yml") == "yaml"
    assert language_from_path("Makefile") is None and language_from_path("x.exe") is None


def test_make_record_reasons():
    assert make_record(b"x\0y", path="a.py", repo="r").reason == "binary"
    assert make_record(b"\xff\xfe abc", path="a.py", repo="r").reason == "invalid_utf8"
    assert make_record(b" \n\t", path="a.py", repo="r").reason == "empty"
    assert make_record(b"x" * 11, path="a.py", repo="r", limits=IngestLimits(10)).reason == "too_large"
    assert make_record(b"x", path="a.exe", repo="r").reason == "unknown_extension"
    rec = make_record(GOOD.encode(), path="a.py", repo="r", license="mit", stars=3)
    assert rec == {
        "id": record_id("r", "a.py", GOOD),
        "content": GOOD,
        "language": "python",
        "repo": "r",
        "path": "a.py",
        "license": "mit",
        "stars": 3,
    }
    # no path: the language column decides (The Stack's names accepted)
    assert make_record(GOOD, path="", repo="r", language_hint="C++")["language"] == "cpp"


def test_broken_tree(tmp_path: Path):
    root = tmp_path / "repos"
    good = {
        "alpha/pkg/mod.py": GOOD,
        "alpha/pkg/util.js": "function f() { return 1; }\n",
        "alpha/run.sh": "#!/bin/sh\necho hi\n",
        "beta/main.go": "package main\nfunc main() {}\n",
        "loose.py": "print('loose file at the root')\n",
        "beta/uni.py": "s = 'héllo 🐍'\n",
    }
    for rel, text in good.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "alpha/LICENSE").write_text("Permission is hereby granted, free of charge, to any person ...")
    (root / "alpha/blob.py").write_bytes(b"\x00\x01\x02binary")
    (root / "alpha/latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (root / "alpha/empty.py").write_text("\n\n")
    (root / "alpha/huge.py").write_text("x = 1\n" * 5000)
    (root / "beta/data.bin").write_bytes(b"whatever")
    (root / "beta/loop").symlink_to(root / "beta")  # a symlink loop
    (root / "beta/dangling.py").symlink_to(root / "nowhere.py")
    (root / "beta/__pycache__").mkdir()
    (root / "beta/__pycache__/x.py").write_text(GOOD)  # always excluded

    records, reasons = _ingest(IngestSource(kind="tree", path=str(root)))
    got = {f"{r['repo']}/{r['path']}": r for r in records}
    want = {("repos/" + k if "/" not in k else k): v for k, v in good.items()}
    assert {k: r["content"] for k, r in got.items()} == want
    assert reasons == Counter(
        binary=1, invalid_utf8=1, empty=1, too_large=1, unknown_extension=2, symlink=2
    )  # LICENSE has no extension: unknown
    assert got["alpha/pkg/mod.py"]["license"] == "mit" and got["beta/main.go"]["license"] == ""
    assert got["alpha/run.sh"]["language"] == "shell"


def test_max_files_and_single_repo(tmp_path: Path):
    for i in range(5):
        (tmp_path / f"f{i}.py").write_text(f"x = {i}\n")
    records, _ = _ingest(IngestSource(kind="repo", path=str(tmp_path), max_files=3, license="apache-2.0"))
    assert [r["path"] for r in records] == ["f0.py", "f1.py", "f2.py"]
    assert {r["repo"] for r in records} == {tmp_path.name} and records[0]["license"] == "apache-2.0"


def test_git_checkouts_named_by_remote(tmp_path: Path):
    co = tmp_path / "checkout1"
    (co / ".git").mkdir(parents=True)
    (co / ".git/config").write_text('[core]\n\tbare = false\n[remote "origin"]\n\turl = git@github.com:own/proj.git\n')
    (co / ".git/HEAD.py").write_text(GOOD)  # inside .git: never read
    (co / "a.py").write_text(GOOD)
    records, _ = _ingest(IngestSource(kind="git", path=str(tmp_path)))
    assert [(r["repo"], r["path"]) for r in records] == [("own/proj", "a.py")]


def test_detect_license(tmp_path: Path):
    (tmp_path / "COPYING").write_text("   Apache License\n   Version 2.0, January 2004\n")
    assert detect_license(tmp_path) == "apache-2.0"
    assert detect_license(tmp_path / "missing") == ""


def _stack_row(path: str, content, repo: str = "o/r", stars=5, licenses=("MIT",)) -> dict:
    return {
        "hexsha": "0" * 40,
        "max_stars_repo_path": path,
        "max_stars_repo_name": repo,
        "max_stars_repo_licenses": list(licenses),
        "max_stars_count": stars,
        "lang": "Python",
        "content": content,
    }


def test_parquet_the_stack_columns_and_broken_files(tmp_path: Path):
    rows = [
        _stack_row("a.py", GOOD),
        _stack_row("b.py", None),  # null content: malformed
        _stack_row("c.py", "x\0y"),  # binary
        _stack_row("d.txt", "text"),  # unknown extension
        _stack_row("e.py", "y = 2\n", stars=None, licenses=("Apache-2.0", "MIT")),
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-0.parquet", row_group_size=2)
    (tmp_path / "part-1.parquet").write_bytes(b"PAR1 this is not parquet")
    records, reasons = _ingest(IngestSource(kind="parquet", path=str(tmp_path)))
    assert [(r["path"], r["repo"], r["stars"], r["license"]) for r in records] == [
        ("a.py", "o/r", 5, "MIT"),
        ("e.py", "o/r", 0, "Apache-2.0,MIT"),
    ]
    assert reasons == Counter(malformed_row=1, binary=1, unknown_extension=1, unreadable_file=1)


def test_jsonl_malformed_lines_and_gzip(tmp_path: Path):
    lines = [
        json.dumps({"content": GOOD, "path": "a.py", "repo": "r1", "license": "mit", "stars": 2}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"path": "no_content.py", "repo": "r1"}),
        json.dumps({"content": 42, "path": "int.py", "repo": "r1"}),
        "",
        json.dumps({"content": "fn main() {}\n", "path": "m.rs", "repo": "r2"}),
        '{"content": "truncated',
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(lines))
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"content": "package x\n", "path": "x.go", "repo": "r3"}) + "\n")
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b'{"content": "a = 1\\n", "path": "z.py"}\n')[:-12])
    records, reasons = _ingest(IngestSource(kind="jsonl", path=str(tmp_path)))
    assert sorted(r["path"] for r in records) == ["a.py", "m.rs", "x.go"]  # the truncated gzip is counted
    assert reasons["malformed_row"] == 5 and reasons["unreadable_file"] == 1


def test_tfds_source(tmp_path: Path):
    import tensorflow_datasets as tfds

    class CodeFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            feats = {k: tfds.features.Text() for k in ("content", "path", "repo")}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(feats))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(5):
                yield i, {"content": f"x = {i}\n" if i != 3 else "", "path": f"f{i}.py", "repo": "tf/repo"}

    builder = CodeFiles(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    records, reasons = _ingest(IngestSource(kind="tfds", path=builder.data_dir, split="train"))
    assert sorted(r["path"] for r in records) == ["f0.py", "f1.py", "f2.py", "f4.py"]
    assert reasons == Counter(empty=1)


def test_missing_inputs_are_clear_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no input files"):
        plan_units(IngestSource(kind="parquet", path=str(tmp_path / "nothing*.parquet")))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        plan_units(IngestSource(kind="tree", path=str(tmp_path / "missing")))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path):
    (tmp_path / "r").mkdir()
    f = tmp_path / "r/secret.py"
    f.write_text(GOOD)
    f.chmod(0)
    _, reasons = _ingest(IngestSource(kind="tree", path=str(tmp_path)))
    assert reasons == Counter(unreadable=1)
