"""Prompts: a stable seeded style per seed, seed windows within limits, templates checked. Seeds: top N by score."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from snowjax.config import ConfigError
from snowjax.synth.prompts import PromptConfig, PromptStyle, build_prompt, choose_style, validate_prompts
from snowjax.synth.seeds import SeedsConfig, read_seeds

CODE = "".join(f"line_{i} = {i}\n" for i in range(300))  # 300 lines, ~3.5k chars


def test_style_choice_is_stable_per_seed_and_follows_weights() -> None:
    cfg = PromptConfig(styles=[PromptStyle("a", "{seed}", 3.0), PromptStyle("b", "{seed}", 1.0)])
    ids = [f"id{i}" for i in range(2000)]
    first = [choose_style(cfg, i).name for i in ids]
    assert first == [choose_style(cfg, i).name for i in reversed(ids)][::-1]  # order does not matter
    share = collections.Counter(first)["a"] / len(ids)
    assert 0.7 < share < 0.8  # weight 3:1
    other = PromptConfig(styles=cfg.styles, seed=1)
    assert [choose_style(other, i).name for i in ids] != first  # the config seed changes the draw


def test_long_seeds_become_windows_within_the_limits() -> None:
    cfg = PromptConfig(styles=[PromptStyle("s", "{language_name}|{fence}|{seed_kind}\n{seed}")], seed_max_chars=500)
    p = build_prompt(cfg, "x", "cpp", CODE)
    start, end = p.seed_span
    assert end - start <= 500 and CODE[start:end].endswith("\n") and (start == 0 or CODE[start - 1] == "\n")
    assert p.text.startswith("C++|cpp|snippet\n") and CODE[start:end].rstrip("\n") in p.text
    assert build_prompt(cfg, "x", "cpp", CODE).seed_span == p.seed_span  # seeded: the same window again
    whole = build_prompt(cfg, "y", "python", "print(1)\n")
    assert whole.seed_span == (0, 9) and "|file\n" in whole.text


def test_bad_templates_name_the_style() -> None:
    with pytest.raises(ConfigError, match=r"styles\[0\].template: unknown fields \['lang'\]"):
        validate_prompts(PromptConfig(styles=[PromptStyle("s", "{lang} {seed}")]))
    with pytest.raises(ConfigError, match=r"must contain \{seed\}"):
        validate_prompts(PromptConfig(styles=[PromptStyle("s", "no seed")]))
    validate_prompts(PromptConfig())  # the built-in styles are valid


def test_seeds_are_the_top_n_by_score_and_bad_records_are_counted(tmp_path: Path) -> None:
    rows = [{"id": f"f{i:02d}", "language": "python" if i % 2 else "java", "content": f"x = {i}\n", "score": i % 7}
            for i in range(30)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "files-00000-of-00001.parquet", row_group_size=8)
    seeds, skipped = read_seeds(SeedsConfig(path=str(tmp_path), max_seeds=5))
    want = sorted(rows, key=lambda r: (-r["score"], r["id"]))[:5]
    assert [s.id for s in seeds] == [r["id"] for r in want]
    seeds, _ = read_seeds(SeedsConfig(path=str(tmp_path), max_seeds=3, languages=["python"]))
    assert all(s.language == "python" for s in seeds) and len(seeds) == 3

    jsonl = tmp_path / "seeds.jsonl"
    jsonl.write_text(
        json.dumps({"id": "a", "language": "go", "content": "package a\n"}) + "\n{broken\n"
        + json.dumps({"id": "b", "language": "go"}) + "\n" + json.dumps({"id": "a", "language": "go", "content": "x"})
        + "\n"
    )  # fmt: skip
    seeds, skipped = read_seeds(SeedsConfig(path=str(jsonl)))
    assert [s.id for s in seeds] == ["a"] and skipped == {"bad_record": 2, "duplicate_id": 1}
