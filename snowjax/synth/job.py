"""``snowjax data synth CONFIG``: phase-3 synthetic documents from a teacher LLM.

The job, as a story::

    seeds (top phase-2 files)  -> prompts (a seeded style per seed, whole file or snippet)
      -> teacher (any OpenAI-compatible endpoint; replies appended to out_dir/replies.jsonl)
      -> validation (extract code; empty, truncated, length, ast, near-dup of seed / of each
         other, benchmark contamination; counted by reason)
      -> out_dir: a token dataset of the accepted documents + report.{json,md}

``out_dir`` is the dataset directory (``snowjax_dataset.json``, shards, ``tokenizer.json``), so a
phase-3 curriculum source points at it. Restarting the same command asks the teacher only for
seeds without a reply record (see :mod:`snowjax.synth.store`); validation and the dataset are
recomputed from all replies every run, in seed order, so they do not depend on arrival order.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from snowjax.config import ConfigError
from snowjax.synth.client import TeacherClient, TeacherConfig, validate_teacher
from snowjax.synth.prompts import PromptConfig, SynthPrompt, build_prompt, validate_prompts
from snowjax.synth.seeds import Seed, SeedsConfig, read_seeds
from snowjax.synth.store import ReplyStore
from snowjax.synth.validate import REASONS, ValidationConfig, Validator, validate_validation

log = logging.getLogger(__name__)

REPLIES_FILE = "replies.jsonl"


@dataclass
class SynthConfig:
    """A ``data synth`` run. Sections: seeds, prompts, teacher, validation (see their modules)."""

    out_dir: str = ""  # the output dataset directory (also holds replies.jsonl and report.{json,md})
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    tokenizer: str = ""  # tokenizer.json of the dataset; default: the one beside the seeds (data prepare's)
    dataset_name: str = "snowjax_synth"
    progress_every_s: float = 30.0  # seconds between progress lines while asking


def validate_synth(cfg: SynthConfig) -> None:
    if not cfg.out_dir:
        raise ConfigError("out_dir: give the output directory")
    if not cfg.seeds.path:
        raise ConfigError("seeds.path: give the seed records (Parquet or JSONL with id, content, language)")
    if cfg.seeds.max_seeds < 0:
        raise ConfigError(f"seeds.max_seeds: must be >= 0, got {cfg.seeds.max_seeds}")
    validate_prompts(cfg.prompts)
    validate_teacher(cfg.teacher)
    validate_validation(cfg.validation)


def find_tokenizer(cfg: SynthConfig) -> Path:
    """``cfg.tokenizer``, else a ``tokenizer.json`` in the seeds' folder or up to two levels above it."""
    if cfg.tokenizer:
        path = Path(cfg.tokenizer)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"tokenizer: no tokenizer file at {path}")
        return path
    start = Path(cfg.seeds.path.split("*")[0] or ".").absolute()
    start = start if start.is_dir() else start.parent
    for d in [start, *list(start.parents)[:2]]:
        if (d / "tokenizer.json").is_file():
            return d / "tokenizer.json"
    raise ConfigError(f"tokenizer: none found beside the seeds ({start} and two levels up); set tokenizer=")


async def _ask_all(cfg: SynthConfig, prompts: list[SynthPrompt], store: ReplyStore) -> collections.Counter:
    """Ask the teacher for every prompt; replies and permanent refusals go to ``store`` as they complete.

    Returns transient failures by reason (those seeds have no record and are asked again next run).
    """
    failures: collections.Counter = collections.Counter()
    todo: Iterator[SynthPrompt] = iter(prompts)
    done, started, last_log = 0, time.monotonic(), time.monotonic()

    async with TeacherClient(cfg.teacher) as client:

        async def worker() -> None:
            nonlocal done, last_log
            for p in todo:  # workers share one iterator: each prompt is taken once
                reply = await client.ask(p.text, p.system, p.seed_id)
                base = {"id": p.seed_id, "language": p.language, "style": p.style, "seed_span": list(p.seed_span)}
                if reply.ok:
                    store.append(
                        {
                            **base,
                            "status": "ok",
                            "text": reply.text,
                            "finish_reason": reply.finish_reason,
                            "usage": reply.usage,
                            "attempts": reply.attempts,
                            "model": client.model,
                            "elapsed_s": round(reply.elapsed_s, 3),
                        }
                    )
                elif reply.permanent:
                    store.append(
                        {
                            **base,
                            "status": "failed",
                            "reason": reply.reason,
                            "error": reply.error[:500],
                            "attempts": reply.attempts,
                            "model": client.model,
                        }
                    )
                    log.warning(
                        "seed %s: the teacher refused the request (%s): %s", p.seed_id, reply.reason, reply.error[:200]
                    )
                else:
                    failures[reply.reason] += 1
                    log.warning(
                        "seed %s: failed after %d attempts (%s): %s",
                        p.seed_id,
                        reply.attempts,
                        reply.reason,
                        reply.error[:200],
                    )
                done += 1
                now = time.monotonic()
                if now - last_log >= cfg.progress_every_s or done == len(prompts):
                    last_log = now
                    log.info(
                        "synth: %d/%d asked (%.2f/s), %d failed so far",
                        done,
                        len(prompts),
                        done / max(now - started, 1e-9),
                        sum(failures.values()),
                    )

        await asyncio.gather(*(worker() for _ in range(min(cfg.teacher.concurrency, max(len(prompts), 1)))))
    return failures


def _validate(cfg: SynthConfig, seeds: list[Seed], store: ReplyStore) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Accepted documents (seed order) and the per-seed outcome counts."""
    validator = Validator(cfg.validation)
    refused: collections.Counter = collections.Counter()
    missing = 0
    docs = []
    for seed in seeds:
        record = store.records.get(seed.id)
        if record is None:
            missing += 1
            continue
        if record.get("status") != "ok":
            refused[str(record.get("reason", "unknown"))] += 1
            continue
        start, end = record.get("seed_span") or (0, len(seed.content))
        verdict = validator.check(
            seed.id,
            seed.language,
            str(record.get("text", "")),
            str(record.get("finish_reason", "")),
            seed.content[start:end],
        )
        if verdict.reason is None:
            docs.append(
                {"id": seed.id, "language": seed.language, "style": record.get("style", ""), "code": verdict.code}
            )
    return docs, {"missing": missing, "refused": dict(refused), "validation": validator.report.to_json()}


def _write_dataset(cfg: SynthConfig, docs: list[dict[str, Any]], tokenizer: Path, meta: dict[str, Any]) -> dict:
    """Tokenize the accepted documents into the token dataset at ``out_dir``; per-language counts."""
    from snowjax.data.shards import write_token_dataset
    from snowjax.data.tokenizer import encode_documents, load_tokenizer

    tok = load_tokenizer(tokenizer)
    ids = encode_documents(tok, [d["code"] for d in docs])  # each ends with EOS
    per_language: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"documents": 0, "tokens": 0})
    examples = []
    for d, tokens in zip(docs, ids, strict=True):
        per_language[d["language"]]["documents"] += 1
        per_language[d["language"]]["tokens"] += len(tokens)
        examples.append({"tokens": tokens, "language": d["language"], "source": f"synth/{d['style']}/{d['id']}"})
    meta = {**meta, "per_language": dict(per_language)}
    write_token_dataset(
        cfg.out_dir, {"train": examples}, name=cfg.dataset_name, tokenizer_path=tokenizer, metadata=meta, overwrite=True
    )
    return dict(per_language)


def run_synth(cfg: SynthConfig) -> dict[str, Any]:
    """Run the whole job (module docstring); returns the report (also in ``out_dir/report.{json,md}``)."""
    validate_synth(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds, skipped = read_seeds(cfg.seeds)
    if not seeds:
        raise ConfigError(f"seeds.path: no usable seed in {cfg.seeds.path} (skipped: {dict(skipped)})")
    tokenizer = find_tokenizer(cfg)
    log.info("synth: %d seeds (%s)", len(seeds), dict(collections.Counter(s.language for s in seeds)))

    with ReplyStore(out / REPLIES_FILE) as store:
        todo = [build_prompt(cfg.prompts, s.id, s.language, s.content) for s in seeds if s.id not in store]
        log.info(
            "synth: %d seeds already answered, asking %s for %d",
            len(seeds) - len(todo),
            cfg.teacher.base_url,
            len(todo),
        )
        try:
            failures = asyncio.run(_ask_all(cfg, todo, store)) if todo else collections.Counter()
        except ConnectionError as e:
            raise ConfigError(f"teacher.base_url: {e}") from e
        docs, outcome = _validate(cfg, seeds, store)
        store_health = {
            "bad_lines": store.bad_lines,
            "duplicate_lines": store.duplicate_lines,
            "truncated_tail": store.truncated_tail,
        }

    report: dict[str, Any] = {
        "seeds": len(seeds),
        "seeds_skipped": dict(skipped),
        "asked": len(todo),
        "already_answered": len(seeds) - len(todo),
        "failed": dict(failures),  # transient failures of this run: asked again next run
        **outcome,
        "store": store_health,
        "accepted": len(docs),
        "styles": dict(collections.Counter(d["style"] for d in docs)),
        "dataset": None,
        "config": asdict(cfg),
    }
    if docs:
        meta = {"stage": "synth", "teacher": cfg.teacher.base_url, "validation": outcome["validation"]}
        report["per_language"] = _write_dataset(cfg, docs, tokenizer, meta)
        report["dataset"] = str(out)
    else:
        log.error("synth: no document was accepted; no dataset written (see the report)")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    report["report_md"] = str(out / "report.md")
    (out / "report.md").write_text(render_report(report))
    log.info("synth: %d accepted of %d seeds; report in %s", len(docs), len(seeds), out / "report.md")
    return report


def render_report(report: dict[str, Any]) -> str:
    """The report as Markdown: seed outcomes, rejections by reason, per-language counts."""
    v = report["validation"]
    lines = [
        "# Synthetic documents",
        "",
        f"- seeds: {report['seeds']} (skipped records: {report['seeds_skipped'] or 'none'})",
        f"- asked this run: {report['asked']}, answered in earlier runs: {report['already_answered']}",
        f"- failed this run (asked again next run): {report['failed'] or 'none'}",
        f"- refused by the teacher (not asked again): {report['refused'] or 'none'}",
        f"- reply log: {report['store']}",
        f"- accepted documents: {report['accepted']} (styles: {report['styles'] or 'none'})",
        f"- dataset: {report['dataset'] or 'none written: no document was accepted'}",
        "",
        "## Rejections by reason",
        "",
        "| reason | replies |",
        "|---|---:|",
        *[f"| {r} | {v['rejected'][r]} |" for r in REASONS],
        "",
        "## Per language",
        "",
        "| language | accepted | tokens | " + " | ".join(REASONS) + " |",
        "|---|---:|---:|" + "---:|" * len(REASONS),
    ]
    per_language = report.get("per_language", {})
    for lang, counts in v["by_language"].items():
        tokens = per_language.get(lang, {}).get("tokens", 0)
        cells = " | ".join(str(counts.get(r, 0)) for r in REASONS)
        lines.append(f"| {lang} | {counts.get('accepted', 0)} | {tokens} | {cells} |")
    return "\n".join(lines) + "\n"
