"""The curation report: files and bytes through every stage, drop reasons, clusters, tokens, contamination.

Written by ``snowjax data prepare`` as ``report.json`` (everything, machine-readable),
``report.md`` (tables) and ``report_*.png`` charts, from the pipeline's Beam counters.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from snowjax.data.pipeline import STAGES

log = logging.getLogger(__name__)


def stage_table(counters: dict[str, int]) -> list[dict[str, Any]]:
    """Per stage: files/bytes in and out, and drops by reason (files, bytes), from ``<stage>/<what>`` counters."""
    rows = []
    for stage in STAGES:
        c = {k.split("/", 1)[1]: v for k, v in counters.items() if k.startswith(f"{stage}/")}
        if not c:
            continue
        drops = {
            k.split(":", 1)[1]: {"files": v, "bytes": c.get(f"drop_bytes:{k.split(':', 1)[1]}", 0)}
            for k, v in sorted(c.items())
            if k.startswith("drop:")
        }
        rows.append(
            {
                "stage": stage,
                "files_in": c.get("files_in", 0),
                "bytes_in": c.get("bytes_in", 0),
                "files_out": c.get("files_out", 0),
                "bytes_out": c.get("bytes_out", 0),
                "drops": drops,
            }
        )
    return rows


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Curation report",
        "",
        f"Output: `{report['out_dir']}`; {report['seconds']:.1f} s.",
        "",
        "## Stages",
        "",
        "| stage | files in | MB in | files out | MB out | dropped (files by reason) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in report["stages"]:
        drops = ", ".join(f"{k} {v['files']}" for k, v in sorted(r["drops"].items(), key=lambda kv: -kv[1]["files"]))
        lines.append(
            f"| {r['stage']} | {r['files_in']:,} | {_mb(r['bytes_in'])} | {r['files_out']:,} | {_mb(r['bytes_out'])} "
            f"| {drops or '-'} |"
        )
    lines += [
        "",
        "## Tokens per language",
        "",
        "| language | split | documents | tokens | share |",
        "|---|---|---:|---:|---:|",
    ]
    for split, langs in report["tokens"].items():
        total = sum(v["tokens"] for v in langs.values()) or 1
        for lang, v in sorted(langs.items(), key=lambda kv: -kv[1]["tokens"]):
            lines.append(
                f"| {lang} | {split} | {v['documents']:,} | {v['tokens']:,} | {100 * v['tokens'] / total:.1f}% |"
            )
    sizes = report["near_duplicate_clusters"]
    lines += ["", "## Near-duplicate clusters", ""]
    if sizes:
        lines += ["| cluster size | clusters |", "|---:|---:|"]
        lines += [f"| {size} | {n:,} |" for size, n in sorted(sizes.items(), key=lambda kv: int(kv[0]))]
    else:
        lines.append("None found.")
    lines += ["", f"## Decontamination ({report['decontamination']['files_removed']} files removed)", ""]
    top = report["decontamination"]["top_items"]
    if top:
        lines += ["| benchmark item | files |", "|---|---:|"]
        lines += [f"| {t['item']} | {t['files']} |" for t in top]
        lines += ["", "Every removed file and the item it matched: `decontamination.jsonl`."]
    else:
        lines.append("No file matched a benchmark item.")
    lines += ["", "Charts: " + ", ".join(f"`{c}`" for c in report["charts"])]
    return "\n".join(lines) + "\n"


def _charts(out: Path, report: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    stages = report["stages"]
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["stage"] for r in stages]
    ax.bar(names, [r["bytes_in"] / 1e6 for r in stages], label="in", alpha=0.6)
    ax.bar(names, [r["bytes_out"] / 1e6 for r in stages], label="out", alpha=0.9)
    ax.set_ylabel("MB")
    ax.set_title("Bytes through each stage")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "report_stages.png")
    written.append("report_stages.png")
    plt.close(fig)

    drops = Counter()
    for r in stages:
        for reason, v in r["drops"].items():
            drops[f"{r['stage']}: {reason}"] += v["files"]
    if drops:
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * len(drops))))
        items = drops.most_common()[::-1]
        ax.barh([k for k, _ in items], [v for _, v in items])
        ax.set_xlabel("files")
        ax.set_title("Dropped files by reason")
        fig.tight_layout()
        fig.savefig(out / "report_drops.png")
        written.append("report_drops.png")
        plt.close(fig)

    sizes = report["near_duplicate_clusters"]
    if sizes:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        keys = sorted(sizes, key=int)
        ax.bar([str(k) for k in keys], [sizes[k] for k in keys])
        ax.set_yscale("log")
        ax.set_xlabel("files per near-duplicate cluster")
        ax.set_ylabel("clusters")
        fig.tight_layout()
        fig.savefig(out / "report_clusters.png")
        written.append("report_clusters.png")
        plt.close(fig)

    train = report["tokens"].get("train", {})
    if train:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        langs = sorted(train, key=lambda k: -train[k]["tokens"])
        ax.bar(langs, [train[k]["tokens"] for k in langs])
        ax.set_ylabel("tokens (train)")
        ax.set_title("Tokens per language")
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
        fig.tight_layout()
        fig.savefig(out / "report_tokens.png")
        written.append("report_tokens.png")
        plt.close(fig)
    return written


def _tokens_per_language(out: Path) -> dict[str, dict[str, dict[str, int]]]:
    from snowjax.data.shards import read_dataset_summary

    summary = read_dataset_summary(out)
    result = {}
    for split, stats in summary["splits"].items():
        langs = stats.get("languages", {})
        result[split] = {
            lang: {"documents": int(v["num_examples"]), "tokens": int(v["num_tokens"])} for lang, v in langs.items()
        }
    return result


def write_report(
    out: Path, counters: dict[str, int], cluster_sizes: dict[int, int], hits: list[dict[str, Any]], *, seconds: float
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and the charts into ``out``; returns the report."""
    by_item = Counter(f"{h['benchmark']} {h['task_id']} ({h['kind']}, {h['method']})" for h in hits)
    report = {
        "out_dir": str(out),
        "seconds": seconds,
        "stages": stage_table(counters),
        "tokens": _tokens_per_language(out),
        "near_duplicate_clusters": {str(k): v for k, v in sorted(cluster_sizes.items())},
        "decontamination": {
            "files_removed": len(hits),
            "top_items": [{"item": k, "files": v} for k, v in by_item.most_common(20)],
        },
        "counters": dict(sorted(counters.items())),
    }
    report["charts"] = _charts(out, report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    log.info("curation report: %s", out / "report.md")
    return report
