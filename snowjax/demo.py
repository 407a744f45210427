"""``snowjax demo``: the whole Arctic-SnowCoder recipe in miniature on this machine's CPU.

1. **Phase-1 data**: ``snowjax data prepare`` on this Python installation's code
   (``configs/data/local.yaml``) -> ``RUN/data``.
2. **Phase-2 data**: ``snowjax data annotate`` (MiniLM + a linear head on heuristic labels,
   ``configs/quality/local.yaml``) picks the top files per language within a small token budget
   -> ``RUN/quality/top``.
3. **Phases 1 and 2** of ``configs/curriculum/demo.yaml``: general pre-training, then the top set
   for 4 epochs -> checkpoints ``alpha`` and ``beta``.
4. **Phase-3 data**: ``snowjax serve`` on ``beta`` (in this process, on a free loopback port) is
   the teacher of ``snowjax data synth`` (``configs/synth/demo.yaml``), seeded with the top files
   -> ``RUN/synth``. A tiny model writes poor code; the path is what the demo shows.
5. **Phase 3**: the top set mixed with the synthetic documents -> checkpoint ``final``.

Every step is skipped when its output exists, so a re-run resumes where the last one stopped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from snowjax.config import load_config, load_dataclass
from snowjax.data.shards import SUMMARY_FILENAME

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PHASE2_BUDGET = 120_000  # tokens of the demo's top set (the paper: 12.5B); 4 epochs in phase 2


def _done(path: Path) -> bool:
    return (path / SUMMARY_FILENAME).is_file()


def prepare_phase1(run_dir: Path) -> Path:
    from snowjax.data.prepare import CurationConfig, prepare

    out = run_dir / "data"
    if not _done(out):
        log.info("demo 1/5: curating this Python installation's code -> %s", out)
        prepare(load_dataclass(CurationConfig, CONFIGS / "data" / "local.yaml", [f"out_dir={out}"]))
    return out


def annotate_phase2(run_dir: Path, phase1: Path) -> Path:
    from snowjax.quality.config import AnnotateConfig
    from snowjax.quality.job import run_annotate

    out = run_dir / "quality"
    if not _done(out / "top"):
        log.info("demo 2/5: scoring files with the quality annotator -> %s", out)
        overrides = [
            f"input={phase1}",
            f"out_dir={out}",
            f"selection.budget={PHASE2_BUDGET}",
            # one 128-token window per file keeps scoring to a couple of minutes on 2 cores
            # (the paper, and configs/quality/local.yaml: the mean of three 512-token windows)
            "encoder.window_tokens=128",
            "encoder.max_windows=1",
            "encoder.buckets=[64, 128]",
        ]
        run_annotate(load_dataclass(AnnotateConfig, CONFIGS / "quality" / "local.yaml", overrides))
    return out / "top"


def synthesize_phase3(run_dir: Path, beta: Path, top: Path) -> Path:
    from snowjax.serve.app import ServeConfig, ServerThread
    from snowjax.synth.job import SynthConfig, run_synth

    out = run_dir / "synth"
    if not _done(out):
        log.info("demo 4/5: phase-3 documents from snowjax serve on %s -> %s", beta, out)
        serve_cfg = ServeConfig(checkpoint=str(beta), port=0, dtype="float32", max_batch=16)
        with ServerThread(serve_cfg) as url:
            overrides = [
                f"out_dir={out}",
                f"seeds.path={top / 'files.parquet'}",
                f"teacher.base_url={url}/v1",
                f"tokenizer={top / 'tokenizer.json'}",
            ]
            report = run_synth(load_dataclass(SynthConfig, CONFIGS / "synth" / "demo.yaml", overrides))
        if not report.get("dataset"):
            raise RuntimeError(f"no synthetic document was accepted; see {report.get('report_md')}")
    return out


def curriculum(run_dir: Path, sources: dict[str, Path], overrides: list[str], phases: int | None = None) -> Any:
    """The demo curriculum with its sources pointed at this run's datasets (first ``phases`` phases)."""
    config = CONFIGS / "curriculum" / "demo.yaml"
    cfg = load_config(config)
    paths = [f"run_dir={run_dir / 'train'}"]
    for i, phase in enumerate(cfg.phases):
        paths += [f"phases.{i}.sources.{j}.path={sources[s.name]}" for j, s in enumerate(phase.sources)]
    cfg = load_config(config, [*paths, *overrides])
    if phases is not None:
        cfg.phases = cfg.phases[:phases]
    return cfg


def synthetic_epochs(synth: Path, phase: Any) -> int:
    """Epochs the small synthetic set needs to fill its share of phase 3 (at its largest mixing weight)."""
    import math

    from snowjax.data.shards import read_dataset_summary

    unique = sum(s["num_tokens"] for s in read_dataset_summary(synth)["splits"].values())
    share = max(stage.weights.get("synthetic", 0.0) / sum(stage.weights.values()) for stage in phase.mixing)
    epochs = max(1, math.ceil(1.05 * share * phase.tokens / max(unique, 1)))
    log.info("the synthetic set holds %d tokens: phase %s repeats it up to %d epochs", unique, phase.name, epochs)
    return epochs


def run_demo(run_dir: str | Path, overrides: list[str]) -> Any:
    """All five steps; returns the training result of the last phase."""
    from snowjax.train.loop import train

    run_dir = Path(run_dir)
    phase1 = prepare_phase1(run_dir)
    top = annotate_phase2(run_dir, phase1)
    sources = {"general": phase1, "top": top, "synthetic": run_dir / "synth"}
    log.info("demo 3/5: phases general and continued")
    train(curriculum(run_dir, sources, overrides, phases=2))
    beta = run_dir / "train" / "phase_checkpoints" / "beta"
    synthesize_phase3(run_dir, beta, top)
    log.info("demo 5/5: phase enhanced")
    full = curriculum(run_dir, sources, overrides)
    k = next(i for i, p in enumerate(full.phases) if any(s.name == "synthetic" for s in p.sources))
    j = next(i for i, s in enumerate(full.phases[k].sources) if s.name == "synthetic")
    epochs = synthetic_epochs(run_dir / "synth", full.phases[k])
    return train(curriculum(run_dir, sources, [*overrides, f"phases.{k}.sources.{j}.epochs={epochs}"]))
