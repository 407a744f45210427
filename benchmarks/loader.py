"""Training data loader throughput on this CPU: tokens per second per CPU core.

Three cases run one after the other in this process, on the same synthetic dataset:

- **plain**: the Grain pipeline of ``snowjax.data.loader.make_train_iterator`` with
  ``DataConfig(path=..., prefetch=0)`` (ArrayRecord -> global shuffle -> repeat -> split
  into rows -> first-fit packing -> batch), the baseline.
- **curriculum**: ``snowjax.data.mixture.MixtureDataset`` with two sources of the same
  dataset (``py``: the python documents, unlimited epochs; ``java``: the java documents,
  4 epochs), a ``MixingSchedule([(0, [0.7, 0.3]), (N, [0.5, 0.5])])`` whose switch falls
  inside the timed batches, iterated with ``iter(ds)`` (host numpy batches only).
- **curriculum + placement**: the same, plus what the trainer does with each batch:
  ``to_global_batch(batch_accounting(batch)[0], mesh)`` on
  ``make_mesh(MeshConfig())`` inside ``jax.set_mesh(mesh)``, then
  ``jax.block_until_ready`` on the device arrays.

Tokens are training tokens: non-padding targets (``segment_ids > 0``). CPU time is
``time.process_time()`` (every thread of this process, user + system) over the timed
batches, so "tokens/s per core" = tokens / CPU seconds; wall-clock tokens/s is reported
beside it. Each case first draws a few untimed warm-up batches, then times batches until
both a minimum count and a minimum duration are reached.

The dataset is written to a temporary directory with
``snowjax.data.shards.write_token_dataset`` (8 ArrayRecord shards): random int32 ids in
[4, 64000), document lengths log-normal with a median of ~1,500 tokens clipped to
[16, 30000] (code files), languages alternating python / java.

For scale, the report also gives the tokens/s that one Arctic-SnowCoder-1.3B training
step consumes on one H100 SXM at 50% MFU (``flops_per_token`` of the 1.3B model at
sequence length 8192, 989e12 dense bf16 FLOP/s), and how many such GPUs one loader core
can feed. Results go to ``<out>/loader_cpu.json`` and ``<out>/loader_cpu.md``.

Usage::

    python benchmarks/loader.py                 # seq 8192 x batch 8, >= 5 s per case (~2-3 min)
    python benchmarks/loader.py --quick         # small dataset, seq 2048 x batch 4, ~1 s per case
    python benchmarks/loader.py --profile 20    # also cProfile 20 curriculum batches (top functions)
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _machine import CpuClock, machine_info, package_version  # benchmarks/_machine.py

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIG = REPO / "configs/train/snowcoder-1.3b-phase1.yaml"
H100_PEAK_BF16 = 989e12  # dense bf16 FLOP/s of an H100 SXM
TARGET_MFU = 0.5
GOAL_TOKENS_PER_CORE = 2.5e6  # the goal for the full curriculum pipeline (with placement)
PLAIN_REFERENCE = (3e6, 11e6)  # tokens/s per core a plain pipeline measured on this machine (the issue)
CONTENTION_WARN = 0.05  # other processes' share of all cores above which the report warns
CASES = ("plain", "curriculum", "curriculum+placement")
JAVA_EPOCHS = 4


@dataclasses.dataclass
class Settings:
    """Dataset and batch shape of one run."""

    documents: int
    seq_len: int
    batch: int
    warmup: int  # untimed batches per case
    min_batches: int  # timed batches per case, at least
    min_seconds: float  # timed wall seconds per case, at least
    max_batches: int  # stop here even if min_seconds is not reached
    switch_step: int  # the mixing schedule's second stage starts at this step
    shards: int  # loader shards of the mixture (the trainer's data.shards; 0 there means one per process)
    median_tokens: float = 1500.0
    sigma: float = 1.0  # log-normal shape of document lengths
    min_tokens: int = 16
    max_tokens: int = 30000
    seed: int = 0


# ----------------------------------------------------------------------------- machine


def versions() -> dict[str, str]:
    return {p: package_version(p) for p in ("grain", "array_record", "tensorflow_datasets", "numpy", "jax", "jaxlib")}


# ----------------------------------------------------------------------------- dataset


def document_lengths(s: Settings) -> np.ndarray:
    """Log-normal document lengths (median ``s.median_tokens``), clipped to [min_tokens, max_tokens]."""
    rng = np.random.default_rng(s.seed)
    lengths = rng.lognormal(np.log(s.median_tokens), s.sigma, s.documents)
    return np.clip(np.rint(lengths), s.min_tokens, s.max_tokens).astype(np.int64)


def examples(lengths: np.ndarray, seed: int) -> Iterator[dict[str, Any]]:
    """Random-id documents of the given lengths; languages alternate python / java."""
    rng = np.random.default_rng(seed + 1)
    for i, n in enumerate(lengths):
        yield {
            "tokens": rng.integers(4, 64000, int(n), dtype=np.int32),
            "language": "python" if i % 2 == 0 else "java",
            "source": f"bench/{i}",
        }


def write_dataset(out: Path, s: Settings) -> dict[str, Any]:
    """Write the benchmark dataset under ``out``; returns its summary numbers."""
    import tensorflow_datasets as tfds

    from snowjax.data.shards import write_token_dataset

    tfds.disable_progress_bar()
    lengths = document_lengths(s)
    t0 = time.perf_counter()
    write_token_dataset(out, {"train": examples(lengths, s.seed)}, name="bench", num_shards=8)
    return {
        "documents": len(lengths),
        "tokens": int(lengths.sum()),
        "median_tokens": float(np.median(lengths)),
        "mean_tokens": float(lengths.mean()),
        "max_tokens": int(lengths.max()),
        "write_s": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- cases


def plain_batches(path: str, s: Settings) -> Callable[[], int]:
    """The baseline: ``make_train_iterator`` without prefetch; returns a function yielding one batch's tokens."""
    from snowjax.config import DataConfig
    from snowjax.data.loader import make_train_iterator

    it = make_train_iterator(DataConfig(path=path, prefetch=0), seq_len=s.seq_len, global_batch_size=s.batch)

    def step() -> int:
        batch = next(it)
        return int(np.count_nonzero(batch["segment_ids"] > 0))

    return step


def mixture_dataset(path: str, s: Settings) -> Any:
    from snowjax.data.mixture import MixingSchedule, MixtureDataset, resolve_source

    sources = [
        resolve_source("py", path, languages=["python"], epochs=0),
        resolve_source("java", path, languages=["java"], epochs=JAVA_EPOCHS),
    ]
    schedule = MixingSchedule([(0, [0.7, 0.3]), (s.switch_step, [0.5, 0.5])])
    return MixtureDataset(sources, schedule, global_batch_size=s.batch, seq_len=s.seq_len, num_shards=s.shards)


def curriculum_batches(path: str, s: Settings) -> Callable[[], int]:
    """The mixture loader's host batches; returns a function yielding one batch's tokens."""
    it = iter(mixture_dataset(path, s))

    def step() -> int:
        batch = next(it)
        return int(np.count_nonzero(batch["segment_ids"] > 0))

    return step


def placed_batches(path: str, s: Settings, mesh: Any) -> Callable[[], int]:
    """The mixture loader plus the trainer's placement of each batch as global device arrays."""
    import jax

    from snowjax.data.mixture import batch_accounting
    from snowjax.parallel import to_global_batch

    it = iter(mixture_dataset(path, s))

    def step() -> int:
        rows = batch_accounting(next(it))[0]
        arrays = to_global_batch(rows, mesh)
        jax.block_until_ready(arrays)
        return int(np.count_nonzero(rows["segment_ids"] > 0))

    return step


def time_case(step: Callable[[], int], s: Settings) -> dict[str, Any]:
    """Warm up, then time batches until ``min_batches`` and ``min_seconds`` are both reached."""
    for _ in range(s.warmup):
        step()
    tokens, batches = 0, 0
    with CpuClock() as clock:
        wall0 = time.perf_counter()
        while batches < s.max_batches and (batches < s.min_batches or time.perf_counter() - wall0 < s.min_seconds):
            tokens += step()
            batches += 1
    cpu_s, wall_s, other = clock.cpu_s, clock.wall_s, clock.other_cpu_util
    return {
        "batches": batches,
        "tokens": tokens,
        "padding_fraction": 1.0 - tokens / (batches * s.batch * s.seq_len),
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "tokens_per_cpu_s": tokens / max(cpu_s, 1e-9),
        "tokens_per_wall_s": tokens / max(wall_s, 1e-9),
        "cores_used": cpu_s / max(wall_s, 1e-9),
        "other_cpu_util": other,
    }


def profile_curriculum(path: str, s: Settings, batches: int, top: int = 15) -> str:
    """cProfile ``batches`` curriculum batches (after warm-up); the top functions by own time."""
    step = curriculum_batches(path, s)
    for _ in range(s.warmup):
        step()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(batches):
        step()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


# ----------------------------------------------------------------------------- GPU demand


def h100_demand() -> dict[str, Any]:
    """Tokens/s one H100 SXM consumes training Arctic-SnowCoder-1.3B at seq 8192 and 50% MFU."""
    from snowjax.config import load_config
    from snowjax.train.metrics import flops_per_token

    model = load_config(MODEL_CONFIG).model
    fpt = flops_per_token(model, 8192)
    return {
        "model_config": str(MODEL_CONFIG.relative_to(REPO)),
        "seq_len": 8192,
        "flops_per_token": fpt,
        "peak_flops_per_s": H100_PEAK_BF16,
        "mfu": TARGET_MFU,
        "tokens_per_s": H100_PEAK_BF16 * TARGET_MFU / fpt,
    }


# ----------------------------------------------------------------------------- report


def format_table(results: Sequence[dict[str, Any]], demand: dict[str, Any]) -> str:
    head = (
        "| case | batch x seq | batches | tokens | CPU s | wall s | cores used | tokens/s per core | tokens/s (wall) "
        "| H100s fed per core | padding | other CPU |"
    )
    rows = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(
            f"| {r['case']} | {r['batch']} x {r['seq_len']} | {r['batches']} | {r['tokens'] / 1e6:.1f}M "
            f"| {r['cpu_s']:.2f} | {r['wall_s']:.2f} | {r['cores_used']:.2f} | {r['tokens_per_cpu_s'] / 1e6:.2f}M "
            f"| {r['tokens_per_wall_s'] / 1e6:.2f}M | {r['tokens_per_cpu_s'] / demand['tokens_per_s']:.0f} "
            f"| {100 * r['padding_fraction']:.1f}% | {100 * (r['other_cpu_util'] or 0):.0f}% |"
        )
    return "\n".join(rows)


def goal_line(report: dict[str, Any]) -> str:
    placed = next((r for r in report["results"] if r["case"] == "curriculum+placement"), None)
    if placed is None:
        return "Goal (the issue): not evaluated, the curriculum+placement case was not run."
    rate = placed["tokens_per_cpu_s"]
    verdict = "**met**" if rate >= GOAL_TOKENS_PER_CORE else "**not met**"
    return (
        f"Goal (the issue): the full curriculum pipeline (mixture + epochs + packing + placement as device arrays) "
        f">= {GOAL_TOKENS_PER_CORE / 1e6:.1f}M tokens/s per core. Measured {rate / 1e6:.2f}M tokens/s per core "
        f"({rate / GOAL_TOKENS_PER_CORE:.2f}x the goal): {verdict}."
    )


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    m, v, s, d = report["machine"], report["versions"], report["settings"], report["h100_demand"]
    data = report["dataset"]
    lines = [
        "# Training data loader on CPU: tokens per second per core",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; {m['platform']}; measured {m['date']}.",
        f"Versions: python {m['python']}, " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        format_table(report["results"], d),
        "",
        goal_line(report),
        f"For reference, the issue measured a plain pipeline at {PLAIN_REFERENCE[0] / 1e6:.0f}-"
        f"{PLAIN_REFERENCE[1] / 1e6:.0f}M tokens/s per core on this machine.",
        "",
        f"GPU demand: Arctic-SnowCoder-1.3B (`{d['model_config']}`) costs {d['flops_per_token']:.3e} training FLOPs "
        f"per token at seq {d['seq_len']} (`snowjax.train.metrics.flops_per_token`); one H100 SXM at "
        f"{100 * d['mfu']:.0f}% MFU of {d['peak_flops_per_s'] / 1e12:.0f} TFLOP/s bf16 consumes "
        f"{d['tokens_per_s']:,.0f} tokens/s. 'H100s fed per core' = tokens/s per core / that rate.",
        "",
        f"Dataset: {data['documents']} synthetic documents, {data['tokens'] / 1e6:.1f}M tokens (median "
        f"{data['median_tokens']:.0f}, mean {data['mean_tokens']:.0f}, max {data['max_tokens']} tokens per document; "
        "log-normal lengths clipped to "
        f"[{s['min_tokens']}, {s['max_tokens']}]), random ids, python/java alternating, 8 ArrayRecord shards.",
        "",
        "Cases: **plain** = `make_train_iterator(DataConfig(path, prefetch=0), ...)` (shuffle -> split rows -> "
        "first-fit pack -> batch); **curriculum** = `MixtureDataset` of `py` (python, unlimited epochs) and `java` "
        f"(java, {JAVA_EPOCHS} epochs), `MixingSchedule([(0, [0.7, 0.3]), ({s['switch_step']}, [0.5, 0.5])])`, "
        f"{s['shards']} loader shard(s), host numpy batches; **curriculum+placement** = the same plus "
        "`to_global_batch(batch_accounting(batch)[0], make_mesh(MeshConfig()))` under `jax.set_mesh` and "
        "`jax.block_until_ready` (one CPU device here).",
        "",
        f"Each case: {s['warmup']} untimed warm-up batches, then at least {s['min_batches']} batches and "
        f"{s['min_seconds']:.0f} s. Tokens are non-padding targets (`segment_ids > 0`). 'tokens/s per core' divides "
        "them by the process's CPU time (`time.process_time()`, all threads); 'cores used' = CPU s / wall s.",
        "",
        f"Command: `{s['command']}`.",
    ]
    busy = [r["other_cpu_util"] for r in report["results"] if r.get("other_cpu_util") is not None]
    if busy and max(busy) > CONTENTION_WARN:
        lines += [
            "",
            f"Note: other processes used up to {100 * max(busy):.0f}% of the machine's CPU time during the timed "
            "batches (`other_cpu_util` in the JSON); CPU-time rates are less affected than wall-clock ones, but "
            "shared caches and frequency still bias them low.",
        ]
    if report.get("profile"):
        lines += ["", f"cProfile of {s['profile_batches']} curriculum batches (top by own time):", "", "```"]
        lines += [ln.rstrip() for ln in report["profile"].strip().splitlines()]
        lines += ["```"]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- driver


def build_settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        s = Settings(
            documents=600,
            seq_len=2048,
            batch=4,
            warmup=2,
            min_batches=10,
            min_seconds=1.0,
            max_batches=2000,
            switch_step=8,
            shards=1,
        )
    else:
        s = Settings(
            documents=4000,
            seq_len=8192,
            batch=8,
            warmup=3,
            min_batches=20,
            min_seconds=args.seconds,
            max_batches=5000,
            switch_step=20,
            shards=1,
        )
    return dataclasses.replace(
        s,
        documents=args.documents or s.documents,
        seq_len=args.seq or s.seq_len,
        batch=args.batch or s.batch,
        shards=args.shards or s.shards,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small dataset, seq 2048 x batch 4, ~1 s per case")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results", help="directory for the JSON and table")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--documents", type=int, default=0, help="override the number of documents (0: per mode)")
    p.add_argument("--seq", type=int, default=0, help="override the sequence length (0: per mode)")
    p.add_argument("--batch", type=int, default=0, help="override the global batch size in rows (0: per mode)")
    p.add_argument("--shards", type=int, default=0, help="mixture loader shards (0: 1, the trainer's default)")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per case in full mode")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="also cProfile N curriculum batches")
    p.add_argument("--no-save", action="store_true", help="print the table only")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    s = build_settings(args)
    import jax

    from snowjax.config import MeshConfig
    from snowjax.parallel import make_mesh

    demand = h100_demand()
    results = []
    profile = ""
    with tempfile.TemporaryDirectory(prefix="snowjax_loader_bench_") as tmp:
        path = str(Path(tmp) / "data")
        print(f"writing {s.documents} documents ...", file=sys.stderr, flush=True)
        data = write_dataset(Path(path), s)
        print(
            f"dataset: {data['tokens'] / 1e6:.1f}M tokens, median {data['median_tokens']:.0f} per document "
            f"({data['write_s']:.1f} s to write)",
            file=sys.stderr,
            flush=True,
        )
        mesh = make_mesh(MeshConfig())
        for case in args.cases:
            if case == "plain":
                r = time_case(plain_batches(path, s), s)
            elif case == "curriculum":
                r = time_case(curriculum_batches(path, s), s)
            else:
                with jax.set_mesh(mesh):
                    r = time_case(placed_batches(path, s, mesh), s)
            r.update(case=case, batch=s.batch, seq_len=s.seq_len)
            print(
                f"[{case}] {r['batches']} batches, {r['tokens_per_cpu_s'] / 1e6:.2f}M tokens/s per core, "
                f"{r['tokens_per_wall_s'] / 1e6:.2f}M tokens/s wall, {r['cores_used']:.2f} cores, "
                f"other processes {100 * (r['other_cpu_util'] or 0):.0f}% CPU",
                file=sys.stderr,
                flush=True,
            )
            results.append(r)
        if args.profile:
            profile = profile_curriculum(path, s, args.profile)
            print(profile, file=sys.stderr, flush=True)
    report = {
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            **dataclasses.asdict(s),
            "quick": args.quick,
            "profile_batches": args.profile,
            "command": " ".join(["python", "benchmarks/loader.py", *(argv if argv is not None else sys.argv[1:])]),
        },
        "dataset": data,
        "h100_demand": demand,
        "goal_tokens_per_cpu_s": GOAL_TOKENS_PER_CORE,
        "results": results,
        "profile": profile,
    }
    print(format_table(results, demand))
    print(
        f"\nH100 SXM at {100 * TARGET_MFU:.0f}% MFU on Arctic-SnowCoder-1.3B (seq 8192): "
        f"{demand['tokens_per_s']:,.0f} tokens/s per GPU"
    )
    print(goal_line(report))
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "loader_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
        write_markdown(args.out / "loader_cpu.md", report)
        print(f"wrote {args.out / 'loader_cpu.json'} and {args.out / 'loader_cpu.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
