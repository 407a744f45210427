"""The Grain loader: shapes, exact next-token targets, packing metadata, no loss, sharding, resume."""

from __future__ import annotations

import collections
import dataclasses
import json
import sys

import grain
import numpy as np
import pytest

from snowjax.config import ConfigError, DataConfig
from snowjax.data.loader import make_eval_iterator, make_train_iterator, split_into_rows
from snowjax.data.shards import open_token_source
from snowjax.data.tokenizer import PAD_ID

SEQ = 16  # row length for the synthetic dataset (documents up to 100 tokens)
BATCH = 4


def take(it, n: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(n)]


def drain(it) -> list[dict[str, np.ndarray]]:
    batches = list(it)
    it.close()
    return batches


def expected_chunks(docs, seq_len: int) -> collections.Counter:
    """Independent statement of the contract: rows of seq_len + 1 tokens overlapping by one."""
    chunks = collections.Counter()
    for doc in docs:
        for start in range(0, len(doc) - 1, seq_len):
            chunks[tuple(doc[start : start + seq_len + 1].tolist())] += 1
    return chunks


def check_rows(batches, seq_len: int, local_batch: int) -> collections.Counter:
    """Check packing invariants of every row; return the multiset of (inputs + last target) chunks."""
    chunks = collections.Counter()
    for b in batches:
        assert set(b) == {"inputs", "targets", "segment_ids", "positions"}
        for v in b.values():
            assert v.shape == (local_batch, seq_len) and v.dtype == np.int32
        for inp, tgt, seg, pos in zip(b["inputs"], b["targets"], b["segment_ids"], b["positions"], strict=True):
            used = int((seg > 0).sum())
            assert (seg[:used] > 0).all() and (seg[used:] == 0).all(), "padding only at the end of a row"
            assert (pos[used:] == 0).all() and (inp[used:] == PAD_ID).all() and (tgt[used:] == PAD_ID).all()
            ids = seg[:used]
            if used:
                assert ids[0] == 1 and set(np.diff(ids).tolist()) <= {0, 1}, "segments numbered 1, 2, ... in order"
            for s in np.unique(ids):
                (where,) = np.nonzero(seg == s)
                np.testing.assert_array_equal(pos[where], np.arange(len(where)))
                # the target of each position is the next input of the same document
                np.testing.assert_array_equal(tgt[where][:-1], inp[where][1:])
                chunks[(*inp[where].tolist(), int(tgt[where][-1]))] += 1
    return chunks


def read_docs(path, split: str) -> list[np.ndarray]:
    source = open_token_source(path, split)
    return [source[i]["tokens"] for i in range(len(source))]


def test_split_into_rows():
    doc = np.arange(10, dtype=np.int32)
    rows = split_into_rows(doc, 4)
    assert [r["inputs"].tolist() for r in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert [r["targets"].tolist() for r in rows] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert len(split_into_rows(np.arange(5), 4)) == 1
    assert split_into_rows(np.arange(1), 4) == []


def test_epoch_exact_synthetic(synthetic_dataset, synthetic_docs):
    cfg = DataConfig(path=str(synthetic_dataset), num_epochs=1, seed=3)
    batches = drain(make_train_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH))
    chunks = check_rows(batches, SEQ, BATCH)
    assert chunks == expected_chunks(synthetic_docs, SEQ)  # long documents chunked, nothing lost or repeated
    n_targets = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
    assert n_targets == sum(len(d) - 1 for d in synthetic_docs)


def test_epoch_exact_stdlib(stdlib_dataset):
    summary = json.loads((stdlib_dataset / "snowjax_dataset.json").read_text())
    docs = read_docs(stdlib_dataset, "train")
    for seq_len in (64, 2048):  # mostly chunked / mostly several documents per row
        cfg = DataConfig(path=str(stdlib_dataset), num_epochs=1)
        batches = drain(make_train_iterator(cfg, seq_len=seq_len, global_batch_size=8))
        assert check_rows(batches, seq_len, 8) == expected_chunks(docs, seq_len)
        n_targets = sum(int((b["segment_ids"] > 0).sum()) for b in batches)
        assert n_targets == summary["splits"]["train"]["num_target_tokens"]
    assert max(len(d) for d in docs) > 2048


def test_two_processes_partition_the_data(synthetic_dataset, synthetic_docs):
    cfg = DataConfig(path=str(synthetic_dataset), num_epochs=1, seed=5)
    single = check_rows(drain(make_train_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH)), SEQ, BATCH)
    parts = []
    for p in range(2):
        it = make_train_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH, process_index=p, process_count=2)
        parts.append(check_rows(drain(it), SEQ, BATCH // 2))
    assert parts[0] + parts[1] == single
    docs0 = {c[0] // 1000 for c in parts[0]}  # tokens encode their document
    docs1 = {c[0] // 1000 for c in parts[1]}
    assert not docs0 & docs1, "a document read by both processes"
    assert docs0 | docs1 == {i + 1 for i, d in enumerate(synthetic_docs) if len(d) > 1}  # 1-token docs predict nothing


def test_epochs_reshuffle(synthetic_dataset, synthetic_docs):
    cfg = DataConfig(path=str(synthetic_dataset), num_epochs=2, seed=1, packing_bins=1)  # one bin keeps order
    batches = drain(make_train_iterator(cfg, seq_len=SEQ, global_batch_size=1))
    chunks = check_rows(batches, SEQ, 1)
    assert chunks == expected_chunks(synthetic_docs, SEQ) + expected_chunks(synthetic_docs, SEQ)
    # document starts in stream order (a token 1000*(i+1) + j is document i's j-th token)
    starts = [
        int(t) // 1000
        for b in batches
        for t, p in zip(b["inputs"][0], b["positions"][0], strict=True)
        if p == 0 and t % 1000 == 0
    ]
    half = len(starts) // 2
    epoch1, epoch2 = starts[:half], starts[half:]
    assert sorted(epoch1) == sorted(epoch2) == sorted(i + 1 for i, d in enumerate(synthetic_docs) if len(d) > 1)
    assert epoch1 != epoch2, "epoch 2 read documents in epoch 1's order"
    assert epoch1 != sorted(epoch1), "not shuffled"


def test_forever_and_deterministic(synthetic_dataset):
    cfg = DataConfig(path=str(synthetic_dataset), num_epochs=0, seed=7)
    a = make_train_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH)
    b = make_train_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH)
    threaded = make_train_iterator(dataclasses.replace(cfg, read_threads=4), seq_len=SEQ, global_batch_size=BATCH)
    c = make_train_iterator(dataclasses.replace(cfg, seed=8), seq_len=SEQ, global_batch_size=BATCH)
    n = 60  # several epochs of the synthetic data
    xs, ys, ts, zs = take(a, n), take(b, n), take(threaded, n), take(c, n)
    for x, y, t in zip(xs, ys, ts, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
            np.testing.assert_array_equal(x[k], t[k])
    assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(xs, zs, strict=True))
    for it in (a, b, threaded, c):
        it.close()


@pytest.mark.parametrize("prefetch", [0, 2])
def test_state_round_trip(synthetic_dataset, prefetch):
    cfg = DataConfig(path=str(synthetic_dataset), num_epochs=0, seed=2, prefetch=prefetch)
    it = make_train_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH)
    take(it, 13)
    state = json.loads(json.dumps(it.get_state()))  # must survive JSON, as in grain's checkpoint handler
    expected = take(it, 20)
    it.close()
    resumed = make_train_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH)
    resumed.set_state(state)
    got = take(resumed, 20)
    resumed.close()
    for x, y in zip(expected, got, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_orbax_checkpoint(tmp_path, synthetic_dataset):
    ocp = pytest.importorskip("orbax.checkpoint")
    cfg = DataConfig(path=str(synthetic_dataset), seed=4)
    it = make_train_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH)
    take(it, 7)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = take(it, 10)
    it.close()
    assert (tmp_path / "ckpt" / "7" / "data_iter" / "process_0-of-1.json").is_file()

    fresh = make_train_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        restored = mngr.restore(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    got = take(restored["data_iter"], 10)
    fresh.close()
    for x, y in zip(expected, got, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["segment_ids"], y["segment_ids"])


def test_eval_iterator_one_ordered_pass(synthetic_dataset, synthetic_docs):
    cfg = DataConfig(path=str(synthetic_dataset))
    batches = drain(make_eval_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH))
    assert check_rows(batches, SEQ, BATCH) == expected_chunks(synthetic_docs[:5], SEQ)
    assert (batches[-1]["segment_ids"][-1] == 0).all(), "last batch padded with empty rows"
    again = drain(make_eval_iterator(cfg, seq_len=SEQ, global_batch_size=BATCH))
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(batches, again, strict=True))


def test_errors(tmp_path, synthetic_dataset):
    with pytest.raises(FileNotFoundError, match=r"data\.path"):
        make_train_iterator(DataConfig(path=str(tmp_path / "missing")), seq_len=SEQ, global_batch_size=BATCH)
    with pytest.raises(FileNotFoundError, match=r"data\.path"):
        make_train_iterator(DataConfig(), seq_len=SEQ, global_batch_size=BATCH)
    with pytest.raises(ConfigError, match=r"data\.split"):
        make_train_iterator(DataConfig(path=str(synthetic_dataset), split="test"), seq_len=SEQ, global_batch_size=4)
    with pytest.raises(ConfigError, match="global_batch_size"):
        make_train_iterator(
            DataConfig(path=str(synthetic_dataset)), seq_len=SEQ, global_batch_size=5, process_index=0, process_count=2
        )


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
