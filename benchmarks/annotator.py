"""Quality-annotator scoring throughput: snowjax's Flax BERT against sentence-transformers (torch) on this CPU.

What is timed (CPU mode, the default), on the same inputs in the same run:

- **inputs**: ``--docs`` whole real code files from this machine's Python standard library
  (seeded sample); each side embeds each file's first ``--length`` (256) tokens of the MiniLM
  tokenizer, [CLS] and [SEP] included (shorter files stay shorter). **Real tokens** are the
  non-padding tokens: the same count for both sides.
- **snowjax**: ``TextEncoder.embed_texts`` with all-MiniLM-L6-v2 (fp32, mean pooling, L2
  normalised), one window per text (``max_windows=1``) of ``--length`` tokens, ``--batch`` (64)
  windows per jit call, length buckets (64, 128, 256): tokenizing (only a file's head slice,
  ``encoder.slice_chars``), bucketing, padding, the forward and the copy back.
- **sentence-transformers**: ``SentenceTransformer(<the same model dir>).encode(texts,
  batch_size=64)`` with ``max_seq_length = --length``, ``torch.set_num_threads(2)``: its own
  tokenizing (whole texts, then truncation), length-sorted batching, padding to the longest in
  the batch, the forward.

The tokenizing part of each side is also timed alone (``tokenize_seconds``: snowjax's
``TextEncoder.windows``, sentence-transformers' ``preprocess``, formerly ``tokenize``), so the encoders can be compared
without it.

Each side runs once untimed (compilation / warm-up), then ``--repeats`` timed passes over all
inputs, alternating sides; medians are reported. The embeddings of the two sides are compared
(max abs difference). The machine is shared: other processes' share of the CPU during each
side's timed passes is recorded (``other_cpu``).

GPU mode (``--gpu``): an arctic-embed-m-sized encoder (12 layers, d=768, 12 heads, FFN 3072,
random weights, bf16) scoring ``--gpu-batch`` windows of 512 tokens per step on all local
devices (batch split over the mesh's data axis), tokens/s per device. Goal: >= 1M tokens/s per
H100 (FineWeb-Edu's annotator: ~0.7M). ``--gpu --tiny`` runs the same code with a 2-layer model
on any backend, to check it.

Usage::

    python benchmarks/annotator.py                 # CPU: 512 docs, length 256, batch 64, 3 repeats (~3 min)
    python benchmarks/annotator.py --docs 128 --repeats 1 --no-save
    python benchmarks/annotator.py --gpu           # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, package_version, system_busy_seconds  # benchmarks/_machine.py

RESULTS = Path(__file__).resolve().parent / "results"
TORCH_THREADS = 2
GOAL_CPU = 1.5  # x sentence-transformers
GOAL_GPU = 1_000_000  # tokens/s per H100


def encoder_flops(cfg: Any, window_lengths: list[int]) -> float:
    """Multiply-add FLOPs (2 per MAC) of a BERT forward over windows of these real lengths (no padding).

    Per token and layer: the q/k/v, output and two feed-forward matmuls; per window and layer:
    the (T, T) scores and their product with v (4 T^2 E). Embeddings, LayerNorms, GELU and
    softmax are left out (a few percent), so this is a lower bound of the work.
    """
    e, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    per_token = layers * (2 * e * 3 * e + 2 * e * e + 2 * 2 * e * f)
    return float(sum(per_token * t + layers * 4 * t * t * e for t in window_lengths))


def gemm_gflops(rows: int, k: int, n: int, repeats: int = 5) -> dict[str, float]:
    """Best float32 GFLOP/s of one (rows, k) x (k, n) product on this CPU in each library.

    ``xla``: jitted ``jnp.dot`` with snowjax's XLA:CPU flags (what the encoder compiles to);
    ``torch``: ``F.linear`` on 2 threads (sentence-transformers' matmul); ``numpy``: its BLAS.
    The encoder's largest matmuls have this shape (batch x length rows, hidden -> FFN), so the
    best of these rates bounds what an fp32 BERT forward can reach here.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    flops = 2.0 * rows * k * n

    def best(fn: Any) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return flops / min(times) / 1e9

    dot = jax.jit(jnp.dot)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(np.ascontiguousarray(b.T))
    with torch.inference_mode():
        return {
            "xla": best(lambda: dot(ja, jb).block_until_ready()),
            "torch": best(lambda: torch.nn.functional.linear(ta, tb)),
            "numpy": best(lambda: a @ b),
        }


def stdlib_texts(n: int, seed: int) -> list[str]:
    import random

    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    random.Random(seed).shuffle(paths)
    out = []
    for p in paths:
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            out.append(text)
        if len(out) == n:
            break
    return out


def timed(fn: Any, repeats: int) -> dict[str, Any]:
    """Median seconds of ``fn()`` over ``repeats`` calls, and the other processes' CPU share meanwhile."""
    times, cpu_self, busy = [], 0.0, 0.0
    for _ in range(repeats):
        t0, c0, b0 = time.perf_counter(), os.times(), system_busy_seconds()
        fn()
        t1, c1, b1 = time.perf_counter(), os.times(), system_busy_seconds()
        times.append(t1 - t0)
        cpu_self += (c1.user - c0.user) + (c1.system - c0.system)
        busy += (b1 or 0.0) - (b0 or 0.0)
    wall = sum(times)
    other = max(0.0, (busy - cpu_self) / (wall * (os.cpu_count() or 1)))
    return {"seconds": statistics.median(times), "all_seconds": times, "other_cpu": other}


def run_cpu(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from snowjax.config import MeshConfig
    from snowjax.model.bert import BertConfig
    from snowjax.parallel import make_mesh
    from snowjax.quality.config import EncoderConfig
    from snowjax.quality.encoder import TextEncoder, default_encoder_dir

    torch.set_num_threads(TORCH_THREADS)
    model_dir = default_encoder_dir()
    texts = stdlib_texts(args.docs, args.seed)
    buckets = [b for b in (64, 128, 256, 512) if b < args.length] + [args.length]
    cfg = EncoderConfig(window_tokens=args.length, max_windows=1, buckets=buckets, batch_size=args.batch)
    ours = TextEncoder(cfg, mesh=make_mesh(MeshConfig(data=1), devices=__import__("jax").devices()[:1]))
    lengths = [len(w[0]) for w in ours.windows(texts)]
    real_tokens = sum(lengths)

    st = SentenceTransformer(str(model_dir), device="cpu")
    st.max_seq_length = args.length

    def snowjax_pass() -> np.ndarray:
        return ours.embed_texts(texts)[0]

    def torch_pass() -> np.ndarray:
        return st.encode(texts, batch_size=args.batch, convert_to_numpy=True)

    a, b = snowjax_pass(), torch_pass()  # warm-up (compiles every bucket) and the parity check
    st_tokenize = getattr(st, "preprocess", None) or st.tokenize  # renamed in sentence-transformers 5
    tokenize = {
        "snowjax": timed(lambda: ours.windows(texts), args.repeats)["seconds"],
        "sentence-transformers": timed(lambda: st_tokenize(texts), args.repeats)["seconds"],
    }
    max_diff = float(np.abs(a - b).max())
    runs: dict[str, list[dict[str, Any]]] = {"snowjax": [], "sentence-transformers": []}
    for _ in range(args.repeats):  # alternate, so drifting load hits both sides alike
        runs["snowjax"].append(timed(snowjax_pass, 1))
        runs["sentence-transformers"].append(timed(torch_pass, 1))
    rows = {}
    for side, rs in runs.items():
        sec = statistics.median(r["seconds"] for r in rs)
        rows[side] = {
            "seconds": sec,
            "tokens_per_s": real_tokens / sec,
            "all_seconds": [r["seconds"] for r in rs],
            "other_cpu": statistics.mean(r["other_cpu"] for r in rs),
            "tokenize_seconds": tokenize[side],
            "encoder_tokens_per_s": real_tokens / max(1e-9, sec - tokenize[side]),
        }
    ratio = rows["snowjax"]["tokens_per_s"] / rows["sentence-transformers"]["tokens_per_s"]
    encoder_ratio = rows["snowjax"]["encoder_tokens_per_s"] / rows["sentence-transformers"]["encoder_tokens_per_s"]
    # The fp32 ceiling: snowjax's tokenizing plus every FLOP of the forward (real tokens only, no
    # padding) at the best matmul rate any library reaches on this machine, against torch's time.
    bert_cfg = BertConfig.from_hf(model_dir)
    flops = encoder_flops(bert_cfg, lengths)
    gemm = gemm_gflops(args.batch * args.length, bert_cfg.hidden_size, bert_cfg.intermediate_size)
    best_gemm = max(gemm.values())
    ceiling_seconds = tokenize["snowjax"] + flops / (best_gemm * 1e9)
    for side, r in rows.items():
        r["encoder_gflops"] = flops / max(1e-9, r["seconds"] - tokenize[side]) / 1e9
    return {
        "mode": "cpu",
        "model": "all-MiniLM-L6-v2 (fp32)",
        "docs": len(texts),
        "length": args.length,
        "batch": args.batch,
        "real_tokens": real_tokens,
        "padding_free_tokens_if_all_full": len(texts) * args.length,
        "max_abs_embedding_diff": max_diff,
        "rows": rows,
        "ratio": ratio,
        "encoder_ratio": encoder_ratio,
        "goal": GOAL_CPU,
        "forward_gflop": flops / 1e9,
        "gemm_gflops": gemm,
        "fp32_ceiling_seconds": ceiling_seconds,
        "fp32_ceiling_ratio": rows["sentence-transformers"]["seconds"] / ceiling_seconds,
        "versions": {p: package_version(p) for p in ("jax", "flax", "torch", "sentence-transformers")},
    }


def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import numpy as np
    from flax import nnx

    from snowjax.config import MeshConfig
    from snowjax.model.bert import BertConfig, bert_from_tensors, random_hf_tensors
    from snowjax.parallel import batch_sharding, make_mesh, replicated

    shape = dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072)
    if args.tiny:
        shape = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)
    cfg = BertConfig(**shape, dtype="bfloat16")
    model = bert_from_tensors(random_hf_tensors(BertConfig(**shape), seed=0, std=0.02), cfg)
    mesh = make_mesh(MeshConfig(data=-1))
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, replicated(mesh))
    batch, length = args.gpu_batch * mesh.size, args.gpu_length
    ids = np.random.default_rng(0).integers(1000, cfg.vocab_size, (batch, length)).astype(np.int32)
    ids_d = jax.device_put(ids, batch_sharding(mesh))
    mask_d = jax.device_put(np.ones_like(ids), batch_sharding(mesh))
    embed = jax.jit(lambda s, i, m: nnx.merge(graphdef, s).embed(i, m, "cls", True))
    embed(state, ids_d, mask_d).block_until_ready()

    def step() -> None:
        for _ in range(args.gpu_steps):
            out = embed(state, ids_d, mask_d)
        out.block_until_ready()

    r = timed(step, args.repeats)
    tokens_per_s = batch * length * args.gpu_steps / r["seconds"]
    return {
        "mode": "gpu",
        "model": "arctic-embed-m shape (12 layers, d=768), random weights, bf16" if not args.tiny else "tiny",
        "device": str(jax.devices()[0].device_kind),
        "devices": mesh.size,
        "batch_per_device": args.gpu_batch,
        "length": length,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_device": tokens_per_s / mesh.size,
        "goal_per_device": GOAL_GPU,
        "other_cpu": r["other_cpu"],
    }


def markdown(res: dict[str, Any], machine: dict[str, Any]) -> str:
    lines = [f"# Annotator scoring throughput ({res['mode']})", "", f"{machine['cpu']}, {machine['cores']} cores"]
    lines[-1] += f", {machine['date']}"
    if res["mode"] == "cpu":
        lines += [
            "",
            f"{res['docs']} stdlib files, the first {res['length']} tokens of each ({res['real_tokens']:,} real "
            f"tokens), batch {res['batch']}, {res['model']}; max |embedding difference| "
            f"{res['max_abs_embedding_diff']:.1e}.",
            "",
            "| side | median s | real tokens/s | of which tokenizing (s) | tokens/s without tokenizing "
            "| encoder GFLOP/s | other CPU |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for side, r in res["rows"].items():
            lines.append(
                f"| {side} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} | {r['tokenize_seconds']:.2f} | "
                f"{r['encoder_tokens_per_s']:,.0f} | {r['encoder_gflops']:.0f} | {r['other_cpu']:.0%} |"
            )
        met = "met" if res["ratio"] >= res["goal"] else "not met"
        lines += [
            "",
            f"**snowjax / sentence-transformers: {res['ratio']:.2f}x** (goal {res['goal']}x: {met}); "
            f"encoders alone (tokenizing subtracted): {res['encoder_ratio']:.2f}x.",
            "",
            "snowjax tokenizes only the head slice of each file its window comes from (`encoder.slice_chars`); "
            "sentence-transformers tokenizes whole files and truncates.",
            "",
            "## fp32 ceiling on this machine",
            "",
            f"The forward over the real tokens is {res['forward_gflop']:,.0f} GFLOP (matmuls and attention products "
            "only); 'encoder GFLOP/s' divides it by each side's time without tokenizing. Best float32 GFLOP/s of "
            f"one ({res['batch']} x {res['length']}, hidden) x (hidden, FFN) product, the encoder's largest matmul: "
            + ", ".join(f"{k} {v:.0f}" for k, v in res["gemm_gflops"].items())
            + ".",
            "",
            "Were every FLOP of snowjax's forward run at the best of these rates "
            f"({max(res['gemm_gflops'].values()):.0f} GFLOP/s, no padding, nothing else), a pass would take "
            f"{res['fp32_ceiling_seconds']:.2f} s with "
            f"tokenizing: **at most {res['fp32_ceiling_ratio']:.2f}x** sentence-transformers' "
            f"{res['rows']['sentence-transformers']['seconds']:.2f} s in float32 on this machine.",
            "",
            "Command: `python benchmarks/annotator.py`.",
        ]
    else:
        lines += [
            "",
            f"{res['model']} on {res['devices']} x {res['device']}, {res['batch_per_device']} x {res['length']} "
            f"tokens per device per step: **{res['tokens_per_s_per_device']:,.0f} tokens/s per device** "
            f"(goal {res['goal_per_device']:,}).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", action="store_true", help="arctic-embed-m-sized encoder on the local accelerators")
    ap.add_argument("--tiny", action="store_true", help="with --gpu: a 2-layer model (checks the code on any backend)")
    ap.add_argument("--gpu-batch", type=int, default=256, help="windows per device per step")
    ap.add_argument("--gpu-length", type=int, default=512)
    ap.add_argument("--gpu-steps", type=int, default=10, help="steps per timed repeat")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    res = run_gpu(args) if args.gpu else run_cpu(args)
    machine = machine_info()
    md = markdown(res, machine)
    print(md)
    if not args.no_save:
        name = "annotator_gpu" if args.gpu else "annotator_cpu"
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine, **res}, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(md)


if __name__ == "__main__":
    main()
