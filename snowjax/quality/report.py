"""The annotate report: ``report.json``, ``report.md`` and PNG charts beside them.

Charts: the head's held-out ROC curve (``roc.png``), score histograms per language
(``scores_by_language.png``) and the token budget met per language for the top and random
selections (``budget.png``). The markdown also shows the top and bottom files per language.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from snowjax.quality.annotator import roc_curve
from snowjax.quality.records import iter_record_batches

SNIPPET_CHARS = 400


def score_stats(scores: np.ndarray, languages: np.ndarray) -> dict[str, dict[str, float]]:
    """Per language (and ``all``): count, mean and quantiles of the non-NaN scores."""
    out = {}
    for lang in ["all", *sorted(set(languages.tolist()))]:
        s = scores if lang == "all" else scores[languages == lang]
        s = s[~np.isnan(s)]
        if not len(s):
            continue
        q = np.quantile(s, [0.1, 0.5, 0.9])
        out[lang] = {"files": len(s), "mean": float(s.mean()), "p10": float(q[0]), "p50": float(q[1])}
        out[lang]["p90"] = float(q[2])
    return out


def pick_examples(cols: dict[str, np.ndarray], input_files: Sequence[Path], k: int) -> dict[str, dict[str, list]]:
    """The ``k`` highest- and lowest-scored files per language with a snippet of each."""
    wanted: dict[tuple[int, int], list[dict[str, Any]]] = {}
    out: dict[str, dict[str, list]] = {}
    scores, langs = cols["score"], cols["language"]
    for lang in sorted(set(langs.tolist())):
        idx = np.flatnonzero((langs == lang) & ~np.isnan(scores))
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        out[lang] = {"top": [], "bottom": []}
        for which, picks in (("top", idx[:k]), ("bottom", idx[::-1][:k])):
            for i in picks:
                ex = {"id": str(cols["id"][i]), "score": float(scores[i]), "num_tokens": int(cols["num_tokens"][i])}
                out[lang][which].append(ex)
                wanted.setdefault((int(cols["shard"][i]), int(cols["row"][i])), []).append(ex)
    for shard, path in enumerate(input_files):
        rows = {r for s, r in wanted if s == shard}
        if not rows:
            continue
        row = 0
        for batch in iter_record_batches(path, columns=["content", "path", "repo"]):
            for rec in batch:
                if row in rows:
                    for ex in wanted[(shard, row)]:
                        ex["path"] = str(rec.get("path") or "")
                        ex["snippet"] = str(rec.get("content") or "")[:SNIPPET_CHARS]
                row += 1
    return out


def _plot(
    out_dir: Path, report: dict[str, Any], roc: dict[str, np.ndarray] | None, cols: dict[str, np.ndarray]
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = []
    if roc is not None and len(roc["labels"]) and 0 < roc["labels"].sum() < len(roc["labels"]):
        fpr, tpr = roc_curve(roc["scores"], roc["labels"])
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, tpr, label=f"AUC {report['head']['held_out_roc_auc']:.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="held-out ROC (files)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out_dir / "roc.png", dpi=110)
        plt.close(fig)
        charts.append("roc.png")
    langs = sorted(report["scores"]["by_language"].keys() - {"all"})
    if langs:
        fig, ax = plt.subplots(figsize=(7, 4))
        bins = np.linspace(0, 1, 41)
        for lang in langs:
            s = cols["score"][(cols["language"] == lang) & ~np.isnan(cols["score"])]
            ax.hist(s, bins=bins, histtype="step", lw=1.5, label=lang, density=True)
        ax.set(xlabel="quality score (mean window probability)", ylabel="density", title="scores per language")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "scores_by_language.png", dpi=110)
        plt.close(fig)
        charts.append("scores_by_language.png")
    sel = report["selection"]
    if sel["top"]["budget_per_language"]:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = sorted(sel["top"]["budget_per_language"])
        x = np.arange(len(names))
        budget = [sel["top"]["budget_per_language"][n]["budget"] for n in names]
        ax.bar(x - 0.27, budget, 0.27, label="budget", color="0.7")
        for j, kind in enumerate(k for k in ("top", "random") if k in sel):
            got = [sel[kind]["budget_per_language"][n]["selected_tokens"] for n in names]
            ax.bar(x + 0.27 * j, got, 0.27, label=f"selected ({kind})")
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set(ylabel="tokens", title="phase-2 budget met per language")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "budget.png", dpi=110)
        plt.close(fig)
        charts.append("budget.png")
    return charts


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def write_report(
    out_dir: Path, report: dict[str, Any], cols: dict[str, np.ndarray], roc: dict[str, np.ndarray] | None
) -> Path:
    """Write ``report.json``, the charts and ``report.md`` under ``out_dir``; returns the markdown's path."""
    report["charts"] = _plot(out_dir, report, roc, cols)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    h, sc, sel = report["head"], report["scores"], report["selection"]
    lines = [
        "# Quality annotation report",
        "",
        f"- encoder: `{report['encoder']['path']}` ({report['encoder']['pooling']} pooling, "
        f"{report['encoder']['window_tokens']}-token windows, up to {report['encoder']['max_windows']} per file)",
        f"- labels: {report['labels']['source']}",
        f"- head: {h.get('kind', '?')}; held-out ROC-AUC **{_fmt(h.get('held_out_roc_auc'))}** on "
        f"{h.get('num_held_out_files', '?')} files ({h.get('positives', '?')} positives / "
        f"{h.get('negatives', '?')} negatives in all)",
        f"- scoring: {sc['counts']} in {sc['seconds']:.1f}s "
        f"({len(sc['resumed_shards'])} shards resumed, {len(sc['scored_shards'])} scored)",
        "",
        "## Scores per language",
        "",
        "| language | files | mean | p10 | p50 | p90 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for lang, s in sc["by_language"].items():
        lines.append(f"| {lang} | {s['files']} | {s['mean']:.3f} | {s['p10']:.3f} | {s['p50']:.3f} | {s['p90']:.3f} |")
    for kind in ("top", "random"):
        if kind not in sel:
            continue
        lines += [
            "",
            f"## Selection: {kind} ({sel[kind]['path']})",
            "",
            f"Budget {sel['budget']:,} tokens; selected {sel[kind]['selected_tokens']:,}.",
            "",
            "| language | corpus share | budget | selected | files | share selected | shortfall | lowest score |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for lang, b in sel[kind]["budget_per_language"].items():
            share = b["selected_tokens"] / max(sel[kind]["selected_tokens"], 1)
            lines.append(
                f"| {lang} | {b['corpus_share']:.2%} | {b['budget']:,} | {b['selected_tokens']:,} | "
                f"{b['selected_files']} | {share:.2%} | {b['shortfall']:,} | {_fmt(b['min_selected_score'])} |"
            )
    lines += ["", "## Examples", ""]
    for lang, ex in report["examples"].items():
        for which in ("top", "bottom"):
            for e in ex[which]:
                snippet = e.get("snippet", "").replace("```", "'''")
                lines += [
                    f"**{lang} {which}** `{e.get('path') or e['id']}` score {e['score']:.3f}, {e['num_tokens']} tokens",
                    "",
                    "```",
                    snippet,
                    "```",
                    "",
                ]
    lines += [f"![{c}]({c})" for c in report["charts"]]
    md = out_dir / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return md
