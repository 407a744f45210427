"""Prefill and decode tokens/s of the 1.3B model on one accelerator (a lent H100/H200), per batch size.

What is timed, per batch size, is ``snowjax.generate.Generator.generate`` on random prompts of
``--prompt`` tokens with the 1.3B config (``configs/model/snowcoder-1.3b.yaml``) and random
weights held in bfloat16 on the device (``param_dtype`` and ``dtype`` bfloat16: an inference
copy; the weights do not change the speed): a generation of 1 new token (**prefill**: the
prompts' forward and the first token) and one of ``--new`` tokens (**total**), after an untimed
call of each shape (compilation). Medians of ``--repeats``; decode = total - prefill.

Reported: prefill tokens/s (batch x prompt / prefill) and its MFU against the device's dense
bf16 peak (2 x layer matmul parameters x tokens + full-mask attention, ``snowjax.train.metrics``,
and the output head once per row), decode tokens/s
(batch x (new - 1) / decode), the decode step time, the weight bytes a step reads over its time
(the bandwidth a memory-bound step needs), and the device's peak bytes in use. Greedy decoding
stops at EOS; every row here is held to ``--new`` tokens only by the random prompts (a row that
stops early is reported). Results: ``<out>/generate_gpu.{json,md}``.

Usage::

    python benchmarks/generate_gpu.py                      # 1.3B, batches 1 8 32 128, prompt 512, 256 new
    python benchmarks/generate_gpu.py --batches 1 64 --prompt 1024
    python benchmarks/generate_gpu.py --smoke              # tiny model on CPU: checks the script only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _machine import machine_info, package_version  # benchmarks/_machine.py

REPO = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import numpy as np
    from flax import nnx

    from snowjax.config import ModelConfig, load_dataclass
    from snowjax.generate import Generator, SamplingConfig
    from snowjax.model.decoder import Decoder, count_params
    from snowjax.train.metrics import attention_flops_per_token, matmul_params, peak_flops_per_device

    cfg = load_dataclass(ModelConfig, args.model, args.set)
    cfg = dataclasses.replace(
        cfg,
        dtype="bfloat16" if not args.smoke else "float32",
        param_dtype="bfloat16" if not args.smoke else "float32",
        max_seq_len=max(cfg.max_seq_len, args.prompt + args.new),
        init_std=0.15,  # larger than training's 0.02, so greedy decoding does not repeat one token
    )
    device = jax.devices()[0]
    params = jax.jit(lambda: nnx.state(Decoder(cfg, nnx.Rngs(0)), nnx.Param))()
    gen = Generator(cfg, params)
    n_params = count_params(cfg)
    bytes_per_param = 2 if cfg.param_dtype == "bfloat16" else 4
    peak = peak_flops_per_device(device)
    rows = []
    for batch in args.batches:
        prompts = np.random.default_rng(batch).integers(4, cfg.vocab_size, (batch, args.prompt)).tolist()
        one, full = SamplingConfig(max_new_tokens=1), SamplingConfig(max_new_tokens=args.new)
        try:
            gen.generate(prompts, one)
            result = gen.generate(prompts, full)
            prefill_times, total_times = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                gen.generate(prompts, one)
                prefill_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                result = gen.generate(prompts, full)
                total_times.append(time.perf_counter() - t0)
        except Exception as e:  # out of device memory at a large batch: record it, go on with the rest
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            rows.append({"batch": batch, "error": "out of memory"})
            print(f"[batch {batch}] out of memory", flush=True)
            continue
        prefill, total = statistics.median(prefill_times), statistics.median(total_times)
        decode = max(total - prefill, 1e-9)
        steps = args.new - 1
        prefill_tokens = batch * args.prompt
        head = cfg.vocab_size * cfg.hidden_size  # the output head runs on each row's last token only
        layer_flops = 2 * (matmul_params(cfg) - head) + attention_flops_per_token(cfg, args.prompt)
        prefill_flops = prefill_tokens * layer_flops + batch * 2 * head
        row = {
            "batch": batch,
            "prefill_s": prefill,
            "total_s": total,
            "decode_s": decode,
            "prefill_tokens_per_s": prefill_tokens / prefill,
            "prefill_mfu": prefill_flops / prefill / peak if peak else None,
            "decode_tokens_per_s": batch * steps / decode,
            "decode_step_ms": 1000 * decode / steps,
            "weight_gb_per_s": n_params * bytes_per_param * steps / decode / 1e9,
            "rows_short": sum(len(g.tokens) < args.new for g in result),
        }
        rows.append(row)
        print(
            f"[batch {batch}] prefill {row['prefill_tokens_per_s']:,.0f} tokens/s, decode "
            f"{row['decode_tokens_per_s']:,.0f} tokens/s ({row['decode_step_ms']:.1f} ms/step)",
            flush=True,
        )
    stats = device.memory_stats() or {}
    return {
        "device": device.device_kind,
        "model": args.model,
        "params": n_params,
        "param_dtype": cfg.param_dtype,
        "prompt": args.prompt,
        "new": args.new,
        "repeats": args.repeats,
        "peak_flops_per_device": peak,
        "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
        "rows": rows,
        "versions": {p: package_version(p) for p in ("jax", "jaxlib", "flax")},
    }


def markdown(res: dict[str, Any], machine: dict[str, Any]) -> str:
    lines = [
        f"# Generation on {res['device']}: prefill and decode tokens/s",
        "",
        f"{machine['cpu']} host, {machine['date']}. Model `{Path(res['model']).name}` ({res['params'] / 1e6:,.0f}M "
        f"parameters, {res['param_dtype']}), random weights; prompt {res['prompt']} tokens, {res['new']} new tokens "
        f"per row, greedy; median of {res['repeats']}. Peak device memory in use: "
        + (f"{res['peak_bytes_in_use'] / 2**30:.1f} GiB." if res["peak_bytes_in_use"] else "unknown."),
        "",
        "| batch | prefill tokens/s | prefill MFU | decode tokens/s | decode step (ms) | weight reads GB/s "
        "| rows short |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['error']} | | | | | |")
            continue
        mfu = f"{r['prefill_mfu']:.0%}" if r["prefill_mfu"] is not None else "n/a"
        lines.append(
            f"| {r['batch']} | {r['prefill_tokens_per_s']:,.0f} | {mfu} | {r['decode_tokens_per_s']:,.0f} | "
            f"{r['decode_step_ms']:.2f} | {r['weight_gb_per_s']:,.0f} | {r['rows_short']} |"
        )
    lines += [
        "",
        "'weight reads GB/s': the model's bytes x decode steps/s, the bandwidth a memory-bound step needs (an "
        "H100 SXM has ~3,350 GB/s); KV-cache reads come on top. 'rows short': rows that stopped at EOS early.",
        "",
        "Command: `python benchmarks/generate_gpu.py`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "configs/model/snowcoder-1.3b.yaml"))
    p.add_argument("--set", nargs="*", default=[], help="model overrides, e.g. num_layers=12")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32, 128])
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny model, short prompts, CPU: check the script runs")
    args = p.parse_args()
    if args.smoke:
        args.model = str(REPO / "configs/model/tiny.yaml")
        args.batches, args.prompt, args.new, args.repeats = [1, 4], 32, 16, 1
    res = run(args)
    machine = machine_info()
    md = markdown(res, machine)
    print(md)
    if not args.no_save and not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "generate_gpu.json").write_text(json.dumps({"machine": machine, **res}, indent=2) + "\n")
        (args.out / "generate_gpu.md").write_text(md)


if __name__ == "__main__":
    main()
