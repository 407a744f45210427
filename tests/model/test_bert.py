"""The Flax BERT encoder: parity with sentence-transformers (MiniLM) and transformers (any BERT directory)."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from snowjax.model.bert import BertConfig, load_hf_bert, random_hf_tensors, save_hf_bert
from snowjax.quality.encoder import default_encoder_dir, load_bert_tokenizer

# Real code, a few lines each (the parity check runs MiniLM on CPU: keep it short).
SNIPPETS = [
    'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n',
    "import os\nfor root, dirs, files in os.walk('.'):\n    print(root, len(files))\n",
    'public class Hello {\n  public static void main(String[] args) {\n    System.out.println("hi");\n  }\n}\n',
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }\n',
]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory):
    """A random 2-layer BERT (d=32) in Hugging Face layout, with MiniLM's tokenizer."""
    cfg = BertConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=128)
    out = tmp_path_factory.mktemp("tiny_bert")
    return save_hf_bert(
        random_hf_tensors(cfg, seed=1), cfg, out, tokenizer_json=default_encoder_dir() / "tokenizer.json"
    )


@nnx.jit(static_argnames=("pooling", "normalize"))
def _embed(model, ids, mask, pooling="mean", normalize=True):
    return model.embed(ids, mask, pooling, normalize)


def _batch(model_dir, texts):
    tok, _, _ = load_bert_tokenizer(model_dir)
    enc = [tok.encode(t).ids for t in texts]
    ids = np.zeros((len(texts), max(map(len, enc))), np.int32)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e)], mask[i, : len(e)] = e, 1
    return ids, mask


def test_minilm_matches_sentence_transformers():
    torch = pytest.importorskip("torch")
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model_dir = default_encoder_dir()
    ours = np.asarray(_embed(load_hf_bert(model_dir), *_batch(model_dir, SNIPPETS), pooling="mean", normalize=True))
    theirs = SentenceTransformer(str(model_dir), device="cpu").encode(SNIPPETS, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (len(SNIPPETS), 384)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("per_row", [True, False], ids=["attention-per-row", "attention-batched"])
def test_any_bert_directory_matches_transformers(tiny_bert_dir, per_row, monkeypatch):
    """Hidden states and CLS pooling of a random tiny BERT equal transformers' BertModel (the loader is exact).

    The texts have different lengths, so padded rows check that padding is masked. Both
    attention forms are checked (per sequence on CPU, batched elsewhere).
    """
    torch = pytest.importorskip("torch")
    import jax
    from transformers import BertModel

    from snowjax.model import bert

    monkeypatch.setattr(bert, "_ATTENTION_PER_ROW_ON_CPU", per_row)
    jax.clear_caches()  # the flag is read when tracing

    ids, mask = _batch(tiny_bert_dir, SNIPPETS[:3])
    ours = load_hf_bert(tiny_bert_dir)
    ref = BertModel.from_pretrained(str(tiny_bert_dir), add_pooling_layer=False).eval()
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    hidden = np.asarray(nnx.jit(lambda m, i, k: m(i, k))(ours, ids, mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(hidden[real], theirs[real], atol=1e-4, rtol=0)
    cls = np.asarray(_embed(ours, ids, mask, pooling="cls", normalize=False))
    np.testing.assert_allclose(cls, theirs[:, 0], atol=1e-4, rtol=0)


def test_missing_weight_is_named(tiny_bert_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tiny_bert_dir / "model.safetensors"))
    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    with pytest.raises(KeyError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        load_hf_bert(tmp_path)
