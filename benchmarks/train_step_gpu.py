"""The 1.3B train step at seq 8192 on one GPU: step time, MFU and peak memory per remat x attention setting.

Written for a lent H100 (goal: >= 50% MFU, ahead of the ~50% MaxText publishes for
Llama-2-7B on H100). Each case runs in its own child process (a clean device and a clean
peak-memory counter): the trainer's own step (``jit_train_step(make_train_step(...))``,
state from ``init_train_state``, donated), on packed rows of synthetic documents (random
lengths, so segment ids and positions look like the loader's), ``--warmup`` untimed steps
(the first compiles) then ``--steps`` timed ones, each blocking on its loss.

Reported per case: median step time, tokens/s, MFU against the device's dense bf16 peak
(``snowjax.train.metrics``), XLA's compiled-step bytes, the device's peak bytes in use,
``snowjax.train.memory``'s estimate, and, for ``cudnn``, the largest difference of the
first batch's loss against the ``xla`` attention on the same parameters (the
segment-aware cuDNN path checked against the einsum path). A case that runs out of memory
is recorded as such. Results: ``<out>/train_step_gpu.{json,md}``.

Usage::

    python benchmarks/train_step_gpu.py                         # 1.3B, seq 8192, 1 row, 5 remat x 2 attention
    python benchmarks/train_step_gpu.py --rows 2 --remat full save_attention_out --attention cudnn
    python benchmarks/train_step_gpu.py --smoke                 # tiny model on CPU: checks the script only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _machine import machine_info, package_version  # benchmarks/_machine.py

REPO = Path(__file__).resolve().parents[1]
REMATS = ("none", "full", "dots", "dots_no_batch", "save_attention_out")
ATTENTIONS = ("cudnn", "xla")


def synthetic_batch(rows: int, seq: int, vocab: int, seed: int = 0) -> dict[str, Any]:
    """Packed rows of random documents (mean ~2k tokens) with segment ids and per-document positions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    seg = np.zeros((rows, seq), np.int32)
    pos = np.zeros((rows, seq), np.int32)
    for r in range(rows):
        t, doc = 0, 1
        while t < seq:
            n = min(int(rng.exponential(2048)) + 16, seq - t)
            seg[r, t : t + n], pos[r, t : t + n] = doc, np.arange(n)
            t, doc = t + n, doc + 1
    tokens = rng.integers(4, vocab, size=(rows, seq + 1), dtype=np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": seg, "positions": pos}


def run_case(args: argparse.Namespace, remat: str, attention: str) -> dict[str, Any]:
    """One measurement in this process (the child): returns the figures as a dict."""
    import dataclasses

    import jax

    from snowjax.config import Config, MeshConfig, ModelConfig, load_dataclass
    from snowjax.parallel import make_mesh, to_global_batch
    from snowjax.train.memory import estimate_train_memory, xla_step_bytes
    from snowjax.train.metrics import flops_per_token, resolve_peak_flops
    from snowjax.train.optimizer import make_optimizer
    from snowjax.train.schedules import make_schedule
    from snowjax.train.state import abstract_train_state, init_train_state
    from snowjax.train.step import jit_train_step, make_train_step, token_loss_sum

    model = load_dataclass(ModelConfig, args.model, args.set)
    model = dataclasses.replace(model, remat=remat, attention=attention, max_seq_len=max(model.max_seq_len, args.seq))
    cfg = Config(model=model, mesh=MeshConfig(data=1))
    devices = jax.devices()[:1]
    mesh = make_mesh(cfg.mesh, devices)
    tx = make_optimizer(cfg.optimizer, 1.0)
    rows = synthetic_batch(args.rows, args.seq, model.vocab_size)
    out: dict[str, Any] = {"remat": remat, "attention": attention, "device": devices[0].device_kind}
    est = estimate_train_memory(model, {"data": 1}, args.rows, args.seq)
    out["estimated_bytes"] = est.total
    with jax.set_mesh(mesh):
        graphdef, abstract, shardings = abstract_train_state(model, tx, mesh)
        step = jit_train_step(make_train_step(graphdef, tx, make_schedule(cfg.schedule, 1000), 1), shardings, mesh)
        batch = to_global_batch(rows, mesh)
        compiled = step.lower(abstract, batch).compile()
        out["xla_bytes"] = xla_step_bytes(compiled.memory_analysis())
        state = init_train_state(model, tx, shardings, 0)
        if attention != "xla":  # the same first loss as the einsum attention, on the same parameters
            ref_graphdef, _, _ = abstract_train_state(dataclasses.replace(model, attention="xla"), tx, mesh)
            one = {k: v[:1] for k, v in batch.items()}
            got = jax.jit(lambda p: token_loss_sum(graphdef, p, one)[0])(state.params)
            ref = jax.jit(lambda p: token_loss_sum(ref_graphdef, p, one)[0])(state.params)
            out["loss_vs_xla"] = abs(float(got) - float(ref)) / max(abs(float(ref)), 1e-9)
        times = []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            loss = float(metrics["loss"])  # blocks
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    stats = devices[0].memory_stats() or {}
    tokens = args.rows * args.seq
    median = statistics.median(times)
    peak = resolve_peak_flops(0.0)
    out.update(
        step_time_s=median,
        step_times_s=times,
        tokens_per_s=tokens / median,
        mfu=tokens / median * flops_per_token(model, args.seq) / peak if peak else None,
        peak_flops_per_device=peak,
        peak_bytes_in_use=stats.get("peak_bytes_in_use"),
        last_loss=loss,
    )
    return out


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    gib = 2**30
    lines = [
        f"# Train step on one {report['device']}: {report['model']} at {report['rows']} x {report['seq']}",
        "",
        f"{report['machine']['date']}; jax {report['jax']}. MFU = model FLOPs (PaLM convention) / dense bf16 peak.",
        "",
        "| remat | attention | step (s) | tokens/s | MFU | peak GiB | XLA GiB | estimate GiB | loss vs xla |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cases"]:
        if "error" in c:
            lines.append(f"| {c['remat']} | {c['attention']} | {c['error']} | | | | | | |")
            continue
        mfu = f"{100 * c['mfu']:.1f}%" if c.get("mfu") is not None else "-"
        peak = f"{c['peak_bytes_in_use'] / gib:.1f}" if c.get("peak_bytes_in_use") else "-"
        diff = f"{c['loss_vs_xla']:.1e}" if "loss_vs_xla" in c else "-"
        lines.append(
            f"| {c['remat']} | {c['attention']} | {c['step_time_s']:.3f} | {c['tokens_per_s']:,.0f} | {mfu} | {peak} "
            f"| {c['xla_bytes'] / gib:.1f} | {c['estimated_bytes'] / gib:.1f} | {diff} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "configs/model/snowcoder-1.3b.yaml"))
    p.add_argument("--set", nargs="*", default=[], help="model overrides, e.g. attention_block=256")
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--rows", type=int, default=1, help="rows of --seq tokens per step")
    p.add_argument("--remat", nargs="+", default=list(REMATS), choices=REMATS)
    p.add_argument("--attention", nargs="+", default=list(ATTENTIONS), choices=ATTENTIONS)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    p.add_argument("--smoke", action="store_true", help="tiny model, seq 256, CPU: check the script runs")
    p.add_argument("--case", help=argparse.SUPPRESS)  # child: "remat,attention"
    args = p.parse_args()
    if args.smoke:
        args.model, args.seq, args.steps, args.warmup = str(REPO / "configs/model/tiny.yaml"), 256, 2, 1
        args.set = [*args.set, "dtype=float32"]
    if args.case:
        remat, attention = args.case.split(",")
        print("RESULT " + json.dumps(run_case(args, remat, attention)))
        return
    cases = []
    for attention in args.attention:
        for remat in args.remat:
            cmd = [sys.executable, __file__, "--case", f"{remat},{attention}", *sys.argv[1:]]
            print(f"== remat={remat} attention={attention}", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ)
            found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode == 0 and found:
                cases.append(json.loads(found[-1][7:]))
                print(json.dumps({k: v for k, v in cases[-1].items() if k != "step_times_s"}), file=sys.stderr)
            else:
                tail = (proc.stderr or proc.stdout)[-1500:]
                error = "out of memory" if "RESOURCE_EXHAUSTED" in tail or "out of memory" in tail else "failed"
                cases.append({"remat": remat, "attention": attention, "error": error, "log_tail": tail})
                print(f"{error}:\n{tail}", file=sys.stderr)
    import jax

    report = {
        "model": Path(args.model).name,
        "seq": args.seq,
        "rows": args.rows,
        "device": next((c["device"] for c in cases if "device" in c), jax.devices()[0].device_kind),
        "jax": package_version("jax"),
        "machine": machine_info(),
        "cases": cases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "train_step_gpu_smoke" if args.smoke else "train_step_gpu"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(args.out / f"{name}.md", report)
    print((args.out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
