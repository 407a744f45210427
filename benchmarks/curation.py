"""Curation throughput on this CPU, per core: MinHash signatures (snowjax vs datasketch), more rows to come.

**Signatures.** The corpus is the standard library's ``.py`` files (sorted paths, read as UTF-8
with replacement), cut at ``--mb`` megabytes (default 19). Every row computes one 256-value
MinHash per file over word 5-grams (``snowjax.data.shingles``: ``text.encode().split()`` words,
``b" ".join`` of 5) in this one process, one after the other:

- **datasketch** ``legacy`` / ``affine32``: ``MinHash(num_perm=256, seed=42, scheme=...)``,
  ``update_batch(shingles)``: SHA-1 of each shingle (its default hash), then its NumPy permutations.
  The shingle lists are built inside the timed region (part of computing a signature).
- **snowjax** ``legacy`` / ``affine32``: ``MinHasher(MinHashConfig(scheme=...)).signature(text)``
  with the default fast shingle hash (compiled, numba) and compiled permutations.
- **snowjax sha1**: the same with ``shingle_hash="sha1"``, datasketch's exact values (checked here).

Rates are megabytes of UTF-8 source per CPU second of this process (``time.process_time``), i.e.
per core; ratios are against datasketch with the same scheme. Compilation is warmed up before
timing. The other processes' share of the machine's CPU during each row is recorded, since the
machine may be shared.

**Whole pipeline.** The same files written as a folder of repositories (20 files each) go
through ``snowjax data prepare`` (:func:`pipeline_rows`): ingest, filters, exact and near dedup,
decontamination, tokenization, repository documents and the ArrayRecord write, on the
DirectRunner with one worker process per core; its rate is MB per CPU second of the driver and
the Beam worker processes together (their CPU read from ``getrusage(RUSAGE_CHILDREN)`` once they
exit), with the wall-clock rate per worker beside it; given a tokenizer, it runs as one Beam
pipeline. Beside it: the ``tokenizers`` BPE encoder alone on the same texts (CPU time, per
core), snowjax's ``encode_ids_batch`` (the pipeline's call: the exact piece cache for ASCII
texts, ids checked equal) and the tokenizer's training, which the pipeline row excludes (it is
given the trained ``tokenizer.json``, as a paper-scale run trains once on a sample). Last, the
pipeline once more on ``--large-mb`` (100) MB of this environment's site-packages, start-up included.

Usage::

    python benchmarks/curation.py                # 19 MB of stdlib Python + 100 MB of site-packages (~2 min)
    python benchmarks/curation.py --mb 4 --no-save
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _machine import CpuClock, machine_info, package_version  # benchmarks/_machine.py

REPO = Path(__file__).resolve().parents[1]
GOAL = 10.0  # the issue: signatures at least 10x datasketch per core


def stdlib_corpus(megabytes: float, where: str = "stdlib") -> list[str]:
    """``.py`` files of the standard library (site-packages excluded), or of ``where="purelib"``
    (this environment's site-packages), sorted by path, up to ``megabytes`` of UTF-8."""
    root = Path(sysconfig.get_paths()[where])
    texts: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        if (where == "stdlib" and "site-packages" in path.parts) or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        size = len(text.encode("utf-8"))
        if total + size > megabytes * 1e6:
            break
        texts.append(text)
        total += size
    return texts


def measure(name: str, fn: Callable[[list[str]], Any], texts: list[str], baseline: str | None = None) -> dict[str, Any]:
    """Time ``fn(texts)`` once: CPU seconds of this process, wall seconds, and other processes' CPU share."""
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    with CpuClock() as clock:
        result = fn(texts)
    cpu_s, wall_s, other = clock.cpu_s, clock.wall_s, clock.other_cpu_util
    return {
        "row": name,
        "baseline": baseline,
        "files": len(texts),
        "megabytes": megabytes,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "mb_per_s_per_core": megabytes / max(cpu_s, 1e-9),
        "other_cpu_util": other,
        "result": result,
    }


def datasketch_signatures(scheme: str) -> Callable[[list[str]], np.ndarray]:
    from datasketch import MinHash

    from snowjax.data.shingles import ngram_words

    def run(texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            m = MinHash(num_perm=256, seed=42, scheme=scheme)
            m.update_batch(ngram_words(text, 5))
            out.append(m.hashvalues)
        return np.array(out, dtype=np.uint32)

    return run


def snowjax_signatures(scheme: str, shingle_hash: str = "fast") -> Callable[[list[str]], np.ndarray]:
    from snowjax.data.dedup import MinHashConfig, MinHasher

    hasher = MinHasher(MinHashConfig(num_perm=256, ngram=5, seed=42, scheme=scheme, shingle_hash=shingle_hash))
    hasher.signature("warm up the compiled kernels once before timing")
    return lambda texts: hasher.signatures(texts)


def minhash_rows(texts: list[str]) -> list[dict[str, Any]]:
    """datasketch and snowjax signature rows on ``texts``, with ratios and a bitwise check of the sha1 row."""
    rows = [
        measure("datasketch legacy", datasketch_signatures("legacy"), texts),
        measure("datasketch affine32", datasketch_signatures("affine32"), texts),
        measure("snowjax legacy (fast hash)", snowjax_signatures("legacy"), texts, "datasketch legacy"),
        measure("snowjax affine32 (fast hash)", snowjax_signatures("affine32"), texts, "datasketch affine32"),
        measure("snowjax legacy (sha1 hash)", snowjax_signatures("legacy", "sha1"), texts, "datasketch legacy"),
    ]
    by_name = {r["row"]: r for r in rows}
    for row in rows:
        base = by_name.get(row["baseline"] or "")
        row["ratio"] = row["mb_per_s_per_core"] / base["mb_per_s_per_core"] if base else None
        if base is not None and "sha1" in row["row"]:
            row["identical_to_baseline"] = bool(np.array_equal(row["result"], base["result"]))
    for row in rows:
        row.pop("result")
    return rows


PIPELINE_GOAL = 2.0  # the issue: the whole pipeline, tokenization included, >= 2 MB/s per core


def _write_tree(texts: list[str], root: Path, files_per_repo: int = 20) -> None:
    """The corpus as a folder of repositories (``repo<k>/file<i>.py``, 20 files each) for a ``tree`` source."""
    for i, text in enumerate(texts):
        path = root / f"repo{i // files_per_repo:04d}" / f"file{i:05d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _prepare_row(texts: list[str], tok: Any, workers: int, name: str) -> dict[str, Any]:
    """``snowjax data prepare`` on ``texts`` (as a tree of repositories) with the trained ``tok``."""
    import tempfile

    from snowjax.config import load_dataclass
    from snowjax.data.prepare import CurationConfig, prepare

    with tempfile.TemporaryDirectory(prefix="snowjax_bench_") as tmp:
        root = Path(tmp)
        _write_tree(texts, root / "src")
        tok.save(str(root / "tokenizer.json"))
        cfg = load_dataclass(
            CurationConfig,
            None,
            [
                f"out_dir={root / 'out'}",
                f"sources=[{{kind: tree, path: '{root / 'src'}'}}]",
                f"tokenizer.path={root / 'tokenizer.json'}",
                "validation_fraction=0.01",
                f"beam={{runner: DirectRunner, direct_running_mode: multi_processing, direct_num_workers: {workers}}}",
            ],
        )
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        row = measure(name, lambda _: prepare(cfg), texts)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        worker_cpu = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
        row["driver_cpu_s"], row["worker_cpu_s"] = row["cpu_s"], worker_cpu
        if row["other_cpu_util"] is not None:  # the Beam workers are this run, not "other" processes
            capacity = row["wall_s"] * (os.cpu_count() or 1)
            row["other_cpu_util"] = max(0.0, row["other_cpu_util"] - worker_cpu / capacity)
        row["cpu_s"] = row["driver_cpu_s"] + worker_cpu
        row["mb_per_s_per_core"] = row["megabytes"] / row["cpu_s"]
        row["mb_per_s_wall_per_worker"] = row["megabytes"] / (row["wall_s"] * workers)
        row["note"] = (
            f"CPU s of driver + Beam workers; by wall: {row['mb_per_s_wall_per_worker']:.2f} MB/s per worker "
            "(start-up included)"
        )
        report = json.loads((root / "out" / "report.json").read_text())
        row["files_out"] = report["stages"][-1]["files_out"]
    return row


def pipeline_rows(texts: list[str], workers: int, vocab_size: int = 4096, large_mb: float = 0) -> list[dict[str, Any]]:
    """The BPE encoder alone and the whole ``snowjax data prepare`` on the same corpus.

    The tokenizer is trained first (timed on its own row) and passed to the pipeline as
    ``tokenizer.path``: at scale it is trained once on a sample, so it is not part of the
    per-byte cost. The pipeline runs on the DirectRunner with ``workers`` worker processes;
    its rate is MB per CPU second of the driver and the workers (planning, Beam start-up and
    the driver-side ArrayRecord write included); MB / (wall s x workers) is reported beside it.
    It runs again on the first quarter of the files: the difference gives the marginal rate
    (MB per CPU second once started, what a paper-scale run sees) and the fixed start-up cost.
    With ``large_mb``, once more on that much of this environment's site-packages (a larger run,
    start-up included, where the fixed cost weighs less).
    """
    from tokenizers import Tokenizer

    from snowjax.data.tokenizer import encode_ids_batch, train_bpe_tokenizer

    rows = []
    trained: dict[str, Any] = {}

    def train(t: list[str]) -> None:
        trained["tok"] = train_bpe_tokenizer(t, vocab_size, min_frequency=2)

    rows.append(measure(f"tokenizers BPE training (vocab {vocab_size})", train, texts))
    tok = trained["tok"]

    encoder = "tokenizers BPE encoder alone (encode_batch_fast)"
    rows.append(measure(encoder, lambda t: [e.ids for e in tok.encode_batch_fast(t, add_special_tokens=False)], texts))
    fresh = Tokenizer.from_str(tok.to_str())  # its own, empty piece cache
    fresh.encode_special_tokens = tok.encode_special_tokens
    ours = measure(
        "snowjax encode_ids_batch (piece cache, the pipeline's call)",
        lambda t: encode_ids_batch(fresh, t),
        texts,
        encoder,
    )
    ours["ratio"] = ours["mb_per_s_per_core"] / rows[-1]["mb_per_s_per_core"]
    same = all(a.tolist() == b for a, b in zip(ours["result"], rows[-1]["result"], strict=True))
    ours["note"] = "ids identical to tokenizers" if same else "IDS DIFFER"
    rows.append(ours)
    for r in rows:  # millions of live ints would slow every later garbage collection (the pipeline's driver)
        r.pop("result", None)
    gc.collect()
    full = _prepare_row(texts, tok, workers, f"snowjax data prepare, {workers} Beam workers")
    part_texts = texts[: max(1, len(texts) // 4)]
    part = _prepare_row(part_texts, tok, workers, f"snowjax data prepare, {workers} Beam workers, first quarter")
    rows += [full, part]
    # Start-up (Beam, worker imports, planning, the report) is a fixed cost that a paper-scale run
    # amortises: the marginal rate is the extra MB per extra CPU second between the two runs.
    extra_mb, extra_cpu = full["megabytes"] - part["megabytes"], full["cpu_s"] - part["cpu_s"]
    fixed_cpu = full["cpu_s"] - extra_cpu * full["megabytes"] / max(extra_mb, 1e-9)
    rows.append(
        {
            "row": "snowjax data prepare, marginal (full - first quarter)",
            "baseline": None,
            "files": full["files"] - part["files"],
            "megabytes": extra_mb,
            "cpu_s": extra_cpu,
            "wall_s": full["wall_s"] - part["wall_s"],
            "mb_per_s_per_core": extra_mb / max(extra_cpu, 1e-9),
            "other_cpu_util": full["other_cpu_util"],
            "fixed_cpu_s": fixed_cpu,
            "note": f"per-MB cost at scale; fixed cost (start-up) about {fixed_cpu:.1f} CPU s",
        }
    )
    if large_mb > 0:
        large = stdlib_corpus(large_mb, "purelib")
        name = f"snowjax data prepare, {workers} Beam workers, {len(large)} site-packages files"
        rows.append(_prepare_row(large, tok, workers, name))
        rows[-1]["note"] += f"; {rows[-1]['files_out']} of {len(large)} files kept; same tokenizer"
    for r in rows:
        r.pop("result", None)
    return rows


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Curation throughput on CPU: MB of source per second per core",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; {m['platform']}; measured {m['date']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        f"Corpus: {report['files']} standard-library .py files, {report['megabytes']:.1f} MB (sorted paths, first "
        f"{report['megabytes']:.1f} MB). MinHash: 256 permutations, word 5-grams, seed 42, one process.",
        "",
        "| row | MB/s per core | vs baseline | CPU s | wall s | other CPU | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        ratio = f"{r['ratio']:.1f}x {r['baseline']}" if r.get("ratio") else "baseline"
        other = "?" if r["other_cpu_util"] is None else f"{100 * r['other_cpu_util']:.0f}%"
        note = ""
        if "identical_to_baseline" in r:
            note = "signatures identical to datasketch" if r["identical_to_baseline"] else "SIGNATURES DIFFER"
        note = r.get("note", note)
        lines.append(
            f"| {r['row']} | {r['mb_per_s_per_core']:.1f} | {ratio} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} "
            f"| {other} | {note} |"
        )
    fast = next(r for r in report["rows"] if r["row"] == "snowjax legacy (fast hash)")
    verdict = "met" if fast["ratio"] >= GOAL else "NOT met"
    lines += [
        "",
        f"Goal (the issue): MinHash signatures >= {GOAL:.0f}x datasketch per core. snowjax's default (legacy scheme, "
        f"fast hash) measured {fast['ratio']:.1f}x: **{verdict}**.",
    ]
    whole = next((r for r in report["rows"] if r["row"].startswith("snowjax data prepare")), None)
    marginal = next((r for r in report["rows"] if "marginal" in r["row"]), None)
    large = next((r for r in report["rows"] if "site-packages" in r["row"]), None)
    if whole is not None and marginal is not None:
        ok = "met" if marginal["mb_per_s_per_core"] >= PIPELINE_GOAL else "NOT met"
        bigger = (
            f", {large['mb_per_s_per_core']:.2f} on {large['megabytes']:.0f} MB of site-packages with start-up"
            if large
            else ""
        )
        lines.append(
            f"Goal: the whole pipeline, tokenization included, >= {PIPELINE_GOAL:.0f} MB/s per core (published "
            f"per-core figures of large pipelines: ~0.8 MB/s). Measured {whole['mb_per_s_per_core']:.2f} on this "
            f"corpus with start-up, {marginal['mb_per_s_per_core']:.2f} marginal (start-up excluded){bigger}: "
            f"**{ok}** at scale (marginal rate); the fixed start-up cost is in the marginal row's note."
        )
    lines += [
        "",
        "'other CPU' is the share of the whole machine's CPU time that other processes used while the row ran "
        "(hypervisor steal included); CPU-time rates are less affected than wall-clock ones, but a busy machine "
        "still biases them low through shared caches.",
        "",
        f"Command: `{report['command']}`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=19.0, help="megabytes of stdlib Python to process")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Beam workers of the pipeline row")
    parser.add_argument(
        "--large-mb", type=float, default=100.0, help="megabytes of site-packages Python for the larger run (0: none)"
    )
    parser.add_argument("--signatures-only", action="store_true", help="skip the tokenizer and pipeline rows")
    args = parser.parse_args(argv)

    texts = stdlib_corpus(args.mb)
    rows = minhash_rows(texts)
    if not args.signatures_only:
        rows += pipeline_rows(texts, args.workers, large_mb=args.large_mb)
    report = {
        "machine": machine_info(),
        "versions": {p: package_version(p) for p in ("numpy", "numba", "datasketch")}
        | {"python": sys.version.split()[0]},
        "files": len(texts),
        "megabytes": sum(len(t.encode("utf-8")) for t in texts) / 1e6,
        "rows": rows,
        "command": " ".join(["python benchmarks/curation.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    text = markdown(report)
    print(text)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "curation_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "curation_cpu.md").write_text(text)
        print(f"saved {args.out / 'curation_cpu.md'} and .json")


if __name__ == "__main__":
    main()
