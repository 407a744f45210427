"""End to end on loopback: seeds -> `snowjax serve` (a snowjax checkpoint) -> validated documents -> token dataset.

The teacher is a real snowjax checkpoint served by the real server, with weights chosen so that
what it writes is known: its layers add nothing to the residual stream (zero output
projections), so the next token depends on the current one only, through an untied output head
set to a chain ``value = <digits>``: after any prompt it writes ``value = ``, then a digit 1-9,
then digits or EOS with equal odds (sampled, seeded per seed id). Each reply is a valid,
distinct-or-identical Python line, so acceptance and near-duplicate rejection are both exercised.
"""

from __future__ import annotations

import json
import math
import re
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_model

from snowjax.config import load_dataclass
from snowjax.data.shards import open_token_source, read_dataset_summary
from snowjax.data.tokenizer import EOS_ID, decode, train_bpe_tokenizer
from snowjax.serve import ServeConfig, ServerThread
from snowjax.synth.job import SynthConfig, run_synth

REPO = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
CFG = tiny_model(tie_embeddings=False, max_seq_len=512)
PEAK = 20.0  # logit of the chosen successors; every other token is 0 (e^-20: never drawn)


def chain_model(out: Path) -> tuple[Path, object]:
    """A Hugging Face directory of the bigram model described in the module docstring (and its tokenizer)."""
    from snowjax.interop.hf import hf_config_dict, save_safetensors

    tok = train_bpe_tokenizer([p.read_text() for p in sorted(STDLIB.glob("*.py"))[:12]], CFG.vocab_size)
    prefix = tok.encode("value = ", add_special_tokens=False).ids
    digits = [tok.token_to_id(str(d)) for d in range(10)]
    assert len(set(prefix)) == len(prefix) and not set(prefix) & set(digits)
    v, e, f = CFG.vocab_size, CFG.hidden_size, CFG.ffn_size
    hd = CFG.resolved_head_dim
    # Residual dims: 0 = any other token, 1..len(prefix) = prefix tokens, then one for all digits.
    embed = np.zeros((v, e), np.float32)
    embed[:, 0] = 1.0
    digit_dim = len(prefix) + 1
    for k, t in enumerate(prefix, 1):
        embed[t] = np.eye(e, dtype=np.float32)[k]
    for t in digits:
        embed[t] = np.eye(e, dtype=np.float32)[digit_dim]
    # RMSNorm turns a one-hot row into sqrt(E) times it: the head's entries are logit / sqrt(E).
    head = np.zeros((v, e), np.float32)
    head[prefix[0], 0] = PEAK
    for k in range(1, len(prefix)):
        head[prefix[k], k] = PEAK
    head[digits[1:], len(prefix)] = PEAK
    head[digits, digit_dim] = PEAK
    head[EOS_ID, digit_dim] = PEAK + math.log(10)  # EOS as likely as all ten digits together
    tensors = {"model.embed_tokens.weight": embed, "lm_head.weight": head / math.sqrt(e)}
    tensors["model.norm.weight"] = np.ones(e, np.float32)
    for i in range(CFG.num_layers):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = np.zeros((CFG.num_heads * hd, e), np.float32)
        tensors[p + "self_attn.k_proj.weight"] = np.zeros((CFG.num_kv_heads * hd, e), np.float32)
        tensors[p + "self_attn.v_proj.weight"] = np.zeros((CFG.num_kv_heads * hd, e), np.float32)
        tensors[p + "self_attn.o_proj.weight"] = np.zeros((e, CFG.num_heads * hd), np.float32)
        tensors[p + "mlp.gate_proj.weight"] = np.zeros((f, e), np.float32)
        tensors[p + "mlp.up_proj.weight"] = np.zeros((f, e), np.float32)
        tensors[p + "mlp.down_proj.weight"] = np.zeros((e, f), np.float32)
        tensors[p + "input_layernorm.weight"] = np.ones(e, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(e, np.float32)
    out.mkdir(parents=True)
    save_safetensors(tensors, out, "5GB")
    (out / "config.json").write_text(json.dumps(hf_config_dict(CFG)))
    tok.save(str(out / "tokenizer.json"))
    return out, tok


SEEDS = {
    "python": [
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
        "import json\n\n\ndef load(path):\n    with open(path) as f:\n        return json.load(f)\n",
        "class Counter:\n    def __init__(self):\n        self.n = 0\n\n    def inc(self):\n        self.n += 1\n",
        "def clamp(x, lo, hi):\n    return max(lo, min(hi, x))\n",
        "def words(text):\n    return [w.lower() for w in text.split() if w.isalpha()]\n",
        "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0.0\n",
    ],
    "java": [
        'public class Hello {\n  public static void main(String[] a) {\n    System.out.println("hi");\n  }\n}\n',
        "int add(int a, int b) {\n  return a + b;\n}\n",
    ],
}


@pytest.mark.slow
def test_seeds_to_validated_documents_through_snowjax_serve(tmp_path: Path) -> None:
    from snowjax.interop.hf import write_init_checkpoint

    hf, tok = chain_model(tmp_path / "hf")
    step = write_init_checkpoint(hf, tmp_path / "teacher")
    seeds = tmp_path / "seeds" / "seeds.jsonl"
    seeds.parent.mkdir()
    rows = [
        {"id": f"{lang}{i}", "language": lang, "content": c, "score": float(10 - i)}
        for lang, codes in SEEDS.items()
        for i, c in enumerate(codes)
    ]
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (seeds.parent / "tokenizer.json").write_text((hf / "tokenizer.json").read_text())  # found beside the seeds

    serve_cfg = ServeConfig(checkpoint=str(step.parent), port=0, pad_multiple=64, dtype="float32")
    with ServerThread(serve_cfg) as url:
        overrides = [
            f"seeds.path={seeds}",
            f"out_dir={tmp_path / 'synth'}",
            f"teacher.base_url={url}/v1",
            "teacher.max_tokens=24",
            "teacher.temperature=1.0",
            "teacher.top_p=1.0",
            "teacher.seed_requests=true",  # reproducible samples (each then runs alone on the server)
            "validation.min_chars=5",
        ]
        cfg = load_dataclass(SynthConfig, REPO / "configs/synth/demo.yaml", overrides)
        report = run_synth(cfg)

    replies = [json.loads(line) for line in (tmp_path / "synth" / "replies.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in replies) == sorted(r["id"] for r in rows)
    assert all(re.fullmatch(r"value = [1-9][0-9]*", r["text"]) for r in replies), [r["text"] for r in replies]
    assert {r["model"] for r in replies} == {"teacher"} and {r["finish_reason"] for r in replies} == {"stop"}
    # Distinct replies are accepted (seed order keeps the first); repeats are near-duplicates.
    distinct = list(
        dict.fromkeys(r["text"] for r in sorted(replies, key=lambda r: [x["id"] for x in rows].index(r["id"])))
    )
    assert report["accepted"] == len(distinct) >= 2
    assert report["validation"]["rejected"]["near_duplicate"] == len(rows) - len(distinct)
    assert report["failed"] == {} and report["refused"] == {} and report["missing"] == 0

    summary = read_dataset_summary(tmp_path / "synth")
    per_language = summary["metadata"]["per_language"]
    assert sum(c["documents"] for c in per_language.values()) == len(distinct)
    docs = open_token_source(tmp_path / "synth", "train")
    texts = sorted(decode(tok, list(d["tokens"][:-1])) for d in docs)
    assert texts == sorted(t + "\n" for t in distinct)
    assert all(d["tokens"][-1] == EOS_ID for d in docs)
    assert {d["language"] for d in docs} <= {b"python", b"java"}
