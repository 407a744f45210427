"""The annotator: windows of long files, averaging over them, the head learning a labelling, save/load."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from quality_helpers import tiny_encoder_cfg

from snowjax.config import MeshConfig
from snowjax.parallel import make_mesh
from snowjax.quality.annotator import Annotator, file_scores, load_head, roc_auc, train_head
from snowjax.quality.config import HeadConfig
from snowjax.quality.encoder import TextEncoder, window_spans


@pytest.fixture(scope="module")
def encoder(tiny_bert_dir) -> TextEncoder:
    return TextEncoder(tiny_encoder_cfg(tiny_bert_dir), mesh=make_mesh(MeshConfig(data=-1)))


def test_window_spans_top_middle_bottom():
    assert window_spans(5, 30) == [(0, 5)]
    assert window_spans(30, 30) == [(0, 30)]
    assert window_spans(50, 30) == [(0, 30), (20, 50)]  # two windows' worth: top and bottom
    assert window_spans(100, 30) == [(0, 30), (35, 65), (70, 100)]
    assert window_spans(100, 30, max_windows=2) == [(0, 30), (70, 100)]


def test_roc_auc_equals_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 1)  # many ties
    labels = rng.random(60) < 0.4
    pairs = [(p, n) for p, n in itertools.product(scores[labels], scores[~labels])]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(scores, labels) == pytest.approx(expected)
    assert roc_auc(np.arange(4.0), np.array([0, 0, 1, 1])) == 1.0


def test_long_file_score_is_the_mean_over_its_three_windows(encoder, tiny_bert_dir):
    """A long file is scored as mean(head(top), head(middle), head(bottom)); a short one by its only window."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, encoder.dim)).astype(np.float32)
    head, _ = train_head(emb, np.arange(40), (np.arange(40) % 2).astype(np.int32), HeadConfig(steps=5))
    annotator = Annotator(encoder, head)
    long_text = " ".join(f"word{i}" for i in range(150))  # ~450 tokens, under max_chars
    short_text = "def f(x):\n    return x\n"
    (wins_long, wins_short) = encoder.windows([long_text, short_text])
    ids = encoder.tokenizer.encode(long_text, add_special_tokens=False).ids
    assert len(ids) > 3 * encoder.content
    assert len(wins_long) == 3 and len(wins_short) == 1
    c = encoder.content
    mid = (len(ids) - c) // 2
    for win, want in zip(wins_long, [ids[:c], ids[mid : mid + c], ids[-c:]], strict=True):
        assert win[1:-1].tolist() == want and len(win) == encoder.cfg.window_tokens  # [CLS] ... [SEP]
    scores, windows = annotator.score_texts([long_text, short_text])
    per_window = head.probabilities(encoder.embed_windows(wins_long))
    assert windows.tolist() == [3, 1]
    assert scores[0] == pytest.approx(per_window.mean(), abs=1e-6)
    assert not np.isclose(per_window.min(), per_window.max())  # the windows really differ
    assert scores[1] == pytest.approx(head.probabilities(encoder.embed_windows(wins_short))[0], abs=1e-6)


def test_huge_file_windows_come_from_head_centre_and_tail(encoder):
    """Past max_chars only three slices are tokenized; the windows are still the file's top, middle and bottom."""
    text = "alpha " * 200 + "middle " * 200 + "omega " * 200  # 3,600 chars > max_chars 2,000
    (wins,) = encoder.windows([text])
    words = [encoder.tokenizer.decode(w[1:-1].tolist()).split() for w in wins]
    assert len(wins) == 3
    assert set(words[0]) == {"alpha"} and set(words[1]) == {"middle"} and set(words[2]) == {"omega"}


def _stdlib_sources(n: int, min_chars: int) -> list[str]:
    import sysconfig
    from pathlib import Path

    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = (p.read_text(encoding="utf-8", errors="replace") for p in paths)
    return list(itertools.islice((t for t in texts if len(t) > min_chars), n))


@pytest.mark.parametrize("max_windows", [1, 2, 3])
def test_sliced_tokenizing_gives_the_files_own_windows(tiny_bert_dir, max_windows):
    """Long real files are tokenized in slices only; top and bottom windows equal tokenizing the file whole,
    the middle one is a run of the file's own tokens from its middle; slicing off reproduces window_spans."""
    cfg = tiny_encoder_cfg(tiny_bert_dir, max_windows=max_windows, max_chars=10**6)
    sliced = TextEncoder(cfg, mesh=make_mesh(MeshConfig(data=-1)))
    whole = TextEncoder(tiny_encoder_cfg(tiny_bert_dir, max_windows=max_windows, max_chars=10**6, slice_chars=0))
    texts = _stdlib_sources(6, min_chars=20 * cfg.window_tokens * cfg.slice_chars)
    assert len(texts) == 6
    c = sliced.content
    for text, got, want in zip(texts, sliced.windows(texts), whole.windows(texts), strict=True):
        pieces, how = sliced._pieces(text, fast=True)
        assert how == "slices" and len(pieces) == max_windows and sum(map(len, pieces)) < len(text) / 5
        ids = sliced.tokenizer.encode(text, add_special_tokens=False).ids
        spans = window_spans(len(ids), c, max_windows)
        assert [w[1:-1].tolist() for w in want] == [ids[a:b] for a, b in spans]
        assert len(got) == max_windows
        assert got[0].tolist() == want[0].tolist()  # top
        assert got[-1].tolist() == want[-1].tolist()  # bottom (the top again for one window)
        if max_windows == 3:
            middle = got[1][1:-1].tolist()
            starts = [i for i in range(len(ids) - c + 1) if ids[i : i + c] == middle]
            assert starts, "the middle window is not a run of the file's tokens"
            assert abs(starts[0] - spans[1][0]) < 0.1 * len(ids)  # near the file's middle


def test_whitespace_heavy_slices_fall_back_to_whole_tokenizing(encoder):
    """Slices with fewer tokens than a window (mostly whitespace) are tokenized whole instead: exact windows."""
    span = encoder.cfg.window_tokens * encoder.cfg.slice_chars
    text = (" " * 60 + "word\n") * (3 * span // 60)  # ~1 token per 65 characters, just over 3 slices
    assert 3 * span < len(text) <= encoder.cfg.max_chars
    ids = encoder.tokenizer.encode(text, add_special_tokens=False).ids
    (wins,) = encoder.windows([text])
    spans = window_spans(len(ids), encoder.content, encoder.cfg.max_windows)
    assert [w[1:-1].tolist() for w in wins] == [ids[a:b] for a, b in spans]


def test_head_learns_separable_labelling_and_round_trips(encoder, tmp_path):
    """Documented functions vs. lines of numbers through the tiny encoder: held-out AUC > 0.95; save/load exact."""
    rng = np.random.default_rng(1)
    pos = [f"def f{i}(x):\n    # add {i} to x\n    return x + {i}\n" for i in range(60)]
    neg = [" ".join(str(v) for v in rng.integers(0, 10**6, size=12)) for _ in range(60)]
    texts = pos + neg
    labels = np.array([1] * 60 + [0] * 60, np.int32)
    emb, owner = encoder.embed_texts(texts)
    head, held = train_head(emb, owner, labels, HeadConfig(kind="mlp", hidden=32, steps=200, learning_rate=1e-2))
    assert head.metrics["held_out_roc_auc"] > 0.95
    assert head.metrics["num_held_out_files"] == 24 and len(held["scores"]) == 24
    assert roc_auc(held["scores"], held["labels"]) == pytest.approx(head.metrics["held_out_roc_auc"])
    head.save(tmp_path / "head")
    loaded, info = load_head(tmp_path / "head")
    np.testing.assert_array_equal(loaded.probabilities(emb), head.probabilities(emb))
    assert info["head"]["kind"] == "mlp"


def test_file_scores_mean_and_nan_for_no_window():
    probs = np.array([0.2, 0.4, 0.9], np.float32)
    out = file_scores(probs, np.array([0, 0, 2]), 3)
    assert out[0] == pytest.approx(0.3) and np.isnan(out[1]) and out[2] == pytest.approx(0.9)


def test_batch_must_divide_over_the_mesh(tiny_bert_dir):
    with pytest.raises(ValueError, match="data-parallel size 8"):
        TextEncoder(tiny_encoder_cfg(tiny_bert_dir, batch_size=12), mesh=make_mesh(MeshConfig(data=-1)))
