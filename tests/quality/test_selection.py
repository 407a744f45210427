"""Selection: per-language budgets met within one file's tokens, the language mix kept, top vs. random."""

from __future__ import annotations

import numpy as np
import pytest

from snowjax.config import ConfigError, load_dataclass
from snowjax.quality.config import AnnotateConfig, validate_annotate
from snowjax.quality.selection import select_top_tokens_per_language


def corpus(seed: int = 0):
    """2,000 files over four languages with skewed token shares, lengths 20-3,000, random scores, some NaN."""
    rng = np.random.default_rng(seed)
    langs = rng.choice(["python", "java", "cpp", "go"], size=2000, p=[0.5, 0.25, 0.15, 0.10])
    tokens = rng.integers(20, 3000, size=2000)
    scores = rng.random(2000).astype(np.float32)
    scores[rng.random(2000) < 0.05] = np.nan  # skipped files
    return scores, tokens, langs


@pytest.mark.parametrize("order", ["score", "random"])
def test_budget_met_per_language_within_one_file_and_mix_kept(order):
    scores, tokens, langs = corpus()
    budget = int(tokens.sum() * 0.3)
    selected, budgets = select_top_tokens_per_language(scores, tokens, langs, budget, order=order, seed=3)
    total = tokens[selected].sum()
    for lang, b in budgets.items():
        mine = selected & (langs == lang)
        got = int(tokens[mine].sum())
        assert got == b.selected_tokens and b.shortfall == 0
        # reached, and over by less than the last file taken (so less than one file's tokens)
        assert b.budget <= got < b.budget + tokens[mine].max()
        corpus_share = tokens[langs == lang].sum() / tokens.sum()
        assert abs(got / total - corpus_share) < 0.01  # within 1 percentage point
        assert not np.isnan(scores[mine]).any()
    if order == "score":  # the top of each language: every selected file outranks every unselected one
        for lang in budgets:
            mine, rest = selected & (langs == lang), ~selected & (langs == lang) & ~np.isnan(scores)
            assert scores[mine].min() >= scores[rest].max()


def test_random_ablation_has_the_same_budget_but_other_files():
    scores, tokens, langs = corpus()
    budget = int(tokens.sum() * 0.2)
    top, b_top = select_top_tokens_per_language(scores, tokens, langs, budget, order="score")
    rnd, b_rnd = select_top_tokens_per_language(scores, tokens, langs, budget, order="random", seed=1)
    again, _ = select_top_tokens_per_language(scores, tokens, langs, budget, order="random", seed=1)
    np.testing.assert_array_equal(rnd, again)  # seeded
    assert {k: v.budget for k, v in b_top.items()} == {k: v.budget for k, v in b_rnd.items()}
    assert (top & rnd).sum() < 0.5 * top.sum()
    assert np.nanmean(scores[top]) > np.nanmean(scores[rnd]) + 0.2


def test_budget_over_the_corpus_takes_everything_and_reports_the_shortfall():
    scores, tokens, langs = corpus()
    selected, budgets = select_top_tokens_per_language(scores, tokens, langs, int(tokens.sum() * 2))
    assert (selected == ~np.isnan(scores)).all()
    assert all(b.shortfall > 0 for b in budgets.values())


def test_budget_accepts_paper_notation_and_bad_configs_name_the_key():
    cfg = load_dataclass(AnnotateConfig, None, ["selection.budget=12.5e9"])
    assert cfg.selection.budget == 12_500_000_000
    with pytest.raises(ConfigError, match="encoder.buckets"):
        validate_annotate(load_dataclass(AnnotateConfig, None, ["encoder.buckets=[64, 256]"]))
    with pytest.raises(ConfigError, match="labels.held_out"):
        validate_annotate(load_dataclass(AnnotateConfig, None, ["labels.held_out=1.5"]))
