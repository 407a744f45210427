"""Throughput of `snowjax serve` on this CPU at 1, 8 and 32 concurrent requests, beside direct batched generation.

What is measured, on the same random weights and the same prompts:

- **direct** (the ceiling): ``Generator.generate`` on batches of 1, 8 and 32 prompts in this
  process (compiled first; median of ``repeats`` calls);
- **server**: ``snowjax serve`` started as a child process (``python -m snowjax.cli serve``,
  ``--max-batch 32``), driven by ``concurrency`` aiohttp clients in this process, each sending
  ``/v1/completions`` requests one after the other until ``rounds x concurrency`` requests are
  done. The same load, untimed, runs first at each level to compile the batch shapes it produces
  (a batch size bucket seen for the first time compiles, a one-off cost a real server pays once).

Model: ``configs/model/tiny.yaml`` (~3M parameters, vocab 4096) in float32 with random weights
(init_std 0.15), exported to a Hugging Face directory both sides load, with a BPE tokenizer
trained on a few stdlib files. Prompts: stdlib source windows of ``prompt`` tokens; ``new``
tokens each, greedy. Rows that end at EOS make both sides do less; rates are computed from the
tokens actually returned (``usage.completion_tokens`` for the server).

The goal (issue 7): at 32 concurrent requests the server reaches >= 70% of direct batch-32
tokens/s. "other CPU" is the share of all cores used by processes other than this one and the
server while measuring (the machine is shared). Results: ``<out>/serve_cpu.{json,md}``.

Usage::

    python benchmarks/serve.py            # prompt 64, 64 new tokens, 3 rounds (~2-4 min)
    python benchmarks/serve.py --new 32 --rounds 2 --no-save
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from _machine import machine_info, package_version, system_busy_seconds  # benchmarks/_machine.py

REPO = Path(__file__).resolve().parents[1]
LEVELS = (1, 8, 32)
GOAL = 0.70


def build_model(out: Path, init_std: float) -> Any:
    """A random tiny model exported as a Hugging Face directory with a stdlib-trained tokenizer; its config."""
    import dataclasses

    from flax import nnx

    from snowjax.config import ModelConfig, load_dataclass
    from snowjax.data.tokenizer import train_bpe_tokenizer
    from snowjax.interop.hf import hf_config_dict, params_to_hf, save_safetensors
    from snowjax.model.decoder import Decoder

    cfg = dataclasses.replace(load_dataclass(ModelConfig, REPO / "configs/model/tiny.yaml"), init_std=init_std)
    _, params = nnx.split(Decoder(cfg, nnx.Rngs(params=0)))
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(params_to_hf(params, cfg), out, "5GB")
    (out / "config.json").write_text(json.dumps(hf_config_dict(cfg)))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text() for p in sorted(stdlib.glob("*.py"))[:40]]
    train_bpe_tokenizer(texts, cfg.vocab_size).save(str(out / "tokenizer.json"))
    return cfg


def make_prompts(tok: Any, n: int, length: int) -> list[str]:
    """``n`` windows of ``length`` tokens of stdlib source, as text."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    ids: list[int] = []
    for p in sorted(stdlib.glob("*.py"))[40:80]:
        ids += tok.encode(p.read_text(), add_special_tokens=False).ids
    step = max(length, len(ids) // (n + 1))
    return [tok.decode(ids[i * step : i * step + length]) for i in range(n)]


def measure_direct(hf: Path, prompts: list[str], new: int, repeats: int, pad: int) -> dict[int, dict[str, float]]:
    from snowjax.data.tokenizer import decode, load_tokenizer
    from snowjax.generate import Generator, SamplingConfig
    from snowjax.interop.hf import import_hf

    cfg, params = import_hf(hf, dtype="float32")
    tok = load_tokenizer(hf)
    gen = Generator(cfg, params, pad_multiple=pad)
    sampling = SamplingConfig(max_new_tokens=new)
    out = {}
    for b in LEVELS:
        ids = [tok.encode(p, add_special_tokens=False).ids for p in prompts[:b]]
        gen.generate(ids, sampling, lambda r: decode(tok, r))  # compile
        times, tokens = [], 0
        busy0, self0, wall0 = system_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
        for _ in range(repeats):
            start = time.perf_counter()
            done = gen.generate(ids, sampling, lambda r: decode(tok, r))
            times.append(time.perf_counter() - start)
            tokens = sum(len(g.tokens) for g in done)
        busy1, self1, wall = system_busy_seconds(), sum(os.times()[:2]), time.perf_counter() - wall0
        other = None
        if busy0 is not None and busy1 is not None:
            other = max(0.0, (busy1 - busy0) - (self1 - self0)) / (wall * (os.cpu_count() or 1))
        t = statistics.median(times)
        out[b] = {"seconds": t, "completions_per_s": b / t, "tokens_per_s": tokens / t, "tokens": tokens,
                  "other_cpu_share": other}  # fmt: skip
        print(f"direct batch {b:2d}: {b / t:7.2f} completions/s, {tokens / t:8.1f} tokens/s (other CPU "
              f"{other if other is None else f'{other:.0%}'})", flush=True)  # fmt: skip
    return out


async def _drive(url: str, prompts: list[str], concurrency: int, total: int, new: int) -> tuple[float, int, int]:
    """(seconds, completions, completion tokens) of ``total`` requests from ``concurrency`` clients."""
    todo = iter(range(total))
    tokens = done = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def client() -> None:
            nonlocal tokens, done
            for i in todo:
                body = {"prompt": prompts[i % len(prompts)], "max_tokens": new, "temperature": 0}
                async with s.post(f"{url}/v1/completions", json=body) as r:
                    reply = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"server answered {r.status}: {reply}")
                tokens += reply["usage"]["completion_tokens"]
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - start, done, tokens


def measure_server(hf: Path, prompts: list[str], new: int, rounds: int, pad: int, wait_ms: float) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "snowjax.cli", "serve", "--checkpoint", str(hf), "--port", str(port)]
    cmd += ["--max-batch", "32", "--batch-wait-ms", str(wait_ms), "--pad-multiple", str(pad), "--dtype", "float32"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"snowjax serve exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                asyncio.run(_health(url))
                break
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        server = psutil.Process(proc.pid)
        out: dict[str, Any] = {}
        for c in LEVELS:
            # Warm-up with the same load: compiles the batch shapes (buckets 1..32) this level produces.
            asyncio.run(_drive(url, prompts, c, rounds * c, new))
            cpu0, busy0, self0 = sum(server.cpu_times()[:2]), system_busy_seconds(), sum(os.times()[:2])
            seconds, done, tokens = asyncio.run(_drive(url, prompts, c, rounds * c, new))
            cpu1, busy1, self1 = sum(server.cpu_times()[:2]), system_busy_seconds(), sum(os.times()[:2])
            other = None
            if busy0 is not None and busy1 is not None:
                other = max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - (self1 - self0)) / (seconds * (os.cpu_count() or 1))
            out[c] = {"seconds": seconds, "completions": done, "tokens": tokens, "completions_per_s": done / seconds,
                      "tokens_per_s": tokens / seconds, "other_cpu_share": other}  # fmt: skip
            print(f"server concurrency {c:2d}: {done / seconds:7.2f} completions/s, {tokens / seconds:8.1f} tokens/s"
                  f" (other CPU {other if other is None else f'{other:.0%}'})", flush=True)  # fmt: skip
        out["batching"] = asyncio.run(_health(url))["batching"]
        return out
    finally:
        proc.terminate()
        proc.wait(30)


async def _health(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
        return await r.json()


def render(result: dict[str, Any]) -> str:
    m, a = result["machine"], result["args"]
    lines = [
        "# `snowjax serve` throughput on CPU: concurrent requests vs direct batched generation",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; {m['platform']}; measured {m['date']}.",
        f"Versions: python {m['python']}, jax {result['versions']['jax']}, aiohttp {result['versions']['aiohttp']}.",
        "",
        f"Model: `configs/model/tiny.yaml` ({result['params']:,} parameters) in float32, random weights; prompts of "
        f"{a['prompt']} stdlib tokens, {a['new']} new tokens each, greedy. Server: `snowjax serve --max-batch 32 "
        f"--batch-wait-ms {a['wait_ms']}` in a child process, {a['rounds']} x concurrency requests per level after "
        f"the same load untimed (compilation); direct: median of {a['repeats']} `Generator.generate` calls.",
        "",
        "| concurrency / batch | server completions/s | server tokens/s | direct completions/s | direct tokens/s "
        "| server / direct (same size) | server / direct batch 32 | other CPU (server / direct) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    d32 = result["direct"]["32"]["tokens_per_s"]
    for c in map(str, LEVELS):
        s, d = result["server"][c], result["direct"][c]
        other = " / ".join("n/a" if x["other_cpu_share"] is None else f"{x['other_cpu_share']:.0%}" for x in (s, d))
        lines.append(
            f"| {c} | {s['completions_per_s']:.2f} | {s['tokens_per_s']:.1f} | {d['completions_per_s']:.2f} | "
            f"{d['tokens_per_s']:.1f} | {s['tokens_per_s'] / d['tokens_per_s']:.2f} | "
            f"{s['tokens_per_s'] / d32:.2f} | {other} |"
        )
    ratio = result["server"]["32"]["tokens_per_s"] / d32
    verdict = "met" if ratio >= GOAL else "not met"
    lines += [
        "",
        f"Goal: at 32 concurrent requests, >= {GOAL:.0%} of direct batch-32 tokens/s: **{ratio:.0%}, {verdict}**.",
        f"Server batching counters at the end: {result['server']['batching']}.",
        "",
        f"Command: `python benchmarks/serve.py {' '.join(result['argv'])}`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    ap.add_argument("--new", type=int, default=64, help="new tokens per completion")
    ap.add_argument("--rounds", type=int, default=3, help="timed requests per client")
    ap.add_argument("--repeats", type=int, default=3, help="timed direct calls per batch size")
    ap.add_argument("--wait-ms", type=float, default=10.0, help="the server's --batch-wait-ms")
    ap.add_argument("--pad", type=int, default=32, help="pad_multiple of both sides")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    from snowjax.data.tokenizer import load_tokenizer
    from snowjax.model.decoder import count_params

    with tempfile.TemporaryDirectory(prefix="snowjax_serve_bench_") as tmp:
        hf = Path(tmp) / "tiny"
        cfg = build_model(hf, init_std=0.15)
        prompts = make_prompts(load_tokenizer(hf), 32, args.prompt)
        direct = measure_direct(hf, prompts, args.new, args.repeats, args.pad)
        server = measure_server(hf, prompts, args.new, args.rounds, args.pad, args.wait_ms)
    result = {
        "machine": machine_info(),
        "versions": {p: package_version(p) for p in ("jax", "aiohttp")},
        "args": vars(args),
        "argv": sys.argv[1:],
        "params": count_params(cfg),
        "direct": {str(k): v for k, v in direct.items()},
        "server": {str(k): v for k, v in server.items()},
    }
    md = render(result)
    print("\n" + md)
    if not args.no_save:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "serve_cpu.md").write_text(md)


if __name__ == "__main__":
    main()
