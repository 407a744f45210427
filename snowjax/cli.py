"""The ``snowjax`` command: one subcommand per user job.

snowjax train CONFIG [key.sub=value ...]     train or resume a run
snowjax data prepare [CONFIG] [key=value]    phase-1 curation on Apache Beam: raw code -> token dataset
snowjax data text --input DIR --out DIR      tokenize a folder of text/code into a dataset
snowjax demo [--run-dir DIR]                 curate, annotate, train, synthesize: the recipe on CPU
snowjax eval [CONFIG] --checkpoint DIR       HumanEval & co. (pass@k, sandboxed), bits per byte
snowjax report RUN_DIR                       markdown report with plots of a run
snowjax export hf --checkpoint DIR --out DIR checkpoint -> Hugging Face LlamaForCausalLM directory
snowjax import hf --hf DIR --out DIR         Hugging Face Llama directory -> checkpoint to start training from
snowjax config CONFIG [key=value ...]        print the fully resolved config
snowjax serve --checkpoint DIR [--port N]    OpenAI-compatible server (/v1/completions, chat, models)
snowjax data synth CONFIG [key=value ...]    phase-3 synthetic documents from a teacher LLM endpoint
snowjax data annotate [CONFIG] [key=value]   phase-2 data: quality scores, per-language top-k by token budget
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from snowjax.config import ConfigError, dump_yaml, load_config

log = logging.getLogger("snowjax")

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s] %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_train(args: argparse.Namespace) -> int:
    from snowjax.distributed import detect_environment
    from snowjax.train.loop import train

    cluster = detect_environment(
        coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
    )
    cfg = load_config(args.config, args.overrides)
    result = train(cfg, only_phase=args.phase, cluster=cluster)
    _finish_run(result)
    return 0


def _finish_run(result: Any) -> None:
    """Write the run report (primary process) and print where things are."""
    import jax

    from snowjax.report import write_report

    if jax.process_index() != 0:
        return
    report = write_report(result.run_dir)
    print(
        f"run dir:     {result.run_dir}\ncheckpoints: {result.checkpoint_dir}\nmetrics:     "
        f"{result.run_dir / 'metrics.jsonl'} (TensorBoard: {result.run_dir / 'tensorboard'})\nreport:      {report}"
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from snowjax.report import write_report

    print(f"report: {write_report(args.run_dir)}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    print(dump_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_data_text(args: argparse.Namespace) -> int:
    from snowjax.data.text_corpus import build_text_dataset

    out = build_text_dataset(
        args.input,
        args.out,
        pattern=args.pattern,
        vocab_size=args.vocab_size,
        max_files=args.max_files,
        seed=args.seed,
    )
    print(f"dataset: {out}")
    return 0


def _config_and_overrides(args: argparse.Namespace, default: Path) -> tuple[Path | str, list[str]]:
    """The job's YAML (``default`` when none was given) and its overrides; ``job a=1`` is only overrides."""
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).exists():
        config, overrides = None, [config, *overrides]
    return config or default, overrides


def _cmd_data_prepare(args: argparse.Namespace) -> int:
    from snowjax.config import load_dataclass
    from snowjax.data.prepare import CurationConfig, prepare

    config, overrides = _config_and_overrides(args, REPO_CONFIGS / "data" / "local.yaml")
    out = prepare(load_dataclass(CurationConfig, config, overrides))
    print(f"dataset: {out}\nreport:  {out / 'report.md'}")
    return 0


def _cmd_data_annotate(args: argparse.Namespace) -> int:
    from snowjax.config import load_dataclass
    from snowjax.quality.config import AnnotateConfig
    from snowjax.quality.job import run_annotate

    config, overrides = _config_and_overrides(args, REPO_CONFIGS / "quality" / "local.yaml")
    report = run_annotate(load_dataclass(AnnotateConfig, config, overrides))
    sel = report["selection"]
    print(f"phase-2 data: {sel['top']['path']} ({sel['top']['selected_tokens']:,} tokens)")
    if "random" in sel:
        print(f"random ablation: {sel['random']['path']}")
    print(f"report: {report['out_dir']}/report.md")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Curate this machine's Python code, annotate, train phases 1-2, synthesize with serve, train phase 3."""
    from snowjax.demo import run_demo

    result = run_demo(args.run_dir, args.overrides)
    run_dir = Path(args.run_dir)
    print(
        f"\ndemo finished at step {result.step}, loss {result.loss:.3f}\n"
        f"phase-1 data: {run_dir / 'data'} (report.md)\nphase-2 data: {run_dir / 'quality'} (report.md)\n"
        f"phase-3 data: {run_dir / 'synth'} (report.md)"
    )
    _finish_run(result)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from snowjax.config import load_dataclass
    from snowjax.eval.run import EvalConfig, run_eval

    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not Path(config).exists():
        overrides.insert(0, config)  # only overrides were given
        config = None
    flags = {
        "checkpoint": args.checkpoint,
        "out_dir": args.out,
        "num_samples": args.n_samples,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
    }
    overrides += [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.benchmark:
        specs = []
        for b in args.benchmark:
            name, _, path = b.partition("=")
            specs.append({"name": name, "path": path, "limit": args.limit or 0})
        overrides.append(f"benchmarks={json.dumps(specs)}")
    elif args.limit:
        overrides.append(f"benchmarks=[{{name: humaneval, limit: {args.limit}}}]")
    results = run_eval(load_dataclass(EvalConfig, config, overrides))
    for name, r in results.items():
        if isinstance(r, dict) and "pass_at_k" in r:
            print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["pass_at_k"].items()))
    return 0


def _cmd_export_hf(args: argparse.Namespace) -> int:
    from snowjax.interop.hf import export_hf

    out = export_hf(
        args.checkpoint,
        args.out,
        config_path=args.config,
        tokenizer_path=args.tokenizer,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
    )
    print(f"hugging face model: {out}")
    return 0


def _cmd_import_hf(args: argparse.Namespace) -> int:
    from snowjax.interop.hf import write_init_checkpoint

    overrides = {"scan_layers": not args.no_scan_layers}
    step_dir = write_init_checkpoint(args.hf, args.out, param_dtype=args.param_dtype, **overrides)
    print(f"checkpoint:  {step_dir}\nmodel:       {step_dir.parent / 'model.yaml'}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from snowjax.serve import ServeConfig, serve

    flags = {k: v for k, v in vars(args).items() if k in {f.name for f in fields(ServeConfig)}}
    serve(ServeConfig(**{k: v for k, v in flags.items() if v is not None}))
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from snowjax.config import load_dataclass
    from snowjax.synth.job import SynthConfig, run_synth

    report = run_synth(load_dataclass(SynthConfig, args.config, args.overrides))
    print(f"dataset: {report.get('dataset') or '(none: no document was accepted)'}\nreport:  {report['report_md']}")
    return 0 if report.get("dataset") else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snowjax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train or resume a run from a YAML config")
    p.add_argument("config", help="YAML config (e.g. configs/curriculum/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--phase", help="run (or re-run) only this phase, from the previous phase's named checkpoint")
    # Multi-process start-up; without these the environment decides (snowjax/distributed.py).
    p.add_argument("--coordinator", help="HOST:PORT of process 0 (explicit cluster; with the two below)")
    p.add_argument("--num-processes", type=int, help="processes in the explicit cluster")
    p.add_argument("--process-id", type=int, help="this process's id in the explicit cluster")
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("report", help="markdown report with plots of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(fn=_cmd_report)

    p = sub.add_parser("config", help="print the resolved config")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=_cmd_config)

    p = sub.add_parser("demo", help="the recipe in miniature: curate, annotate, train, synthesize (CPU)")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides for the demo config")
    p.set_defaults(fn=_cmd_demo)

    data = sub.add_parser("data", help="dataset jobs").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("text", help="train a BPE tokenizer on a folder of files and write a token dataset")
    p.add_argument("--input", nargs="+", required=True, help="folders to read")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--pattern", default="*.py", help="file glob (default *.py)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--max-files", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_cmd_data_text)
    p = data.add_parser("prepare", help="curate raw code into the phase-1 dataset (Apache Beam pipeline)")
    p.add_argument("config", nargs="?", help="YAML with CurationConfig keys (default configs/data/local.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. out_dir=data/p1 beam.direct_num_workers=4")
    p.set_defaults(fn=_cmd_data_prepare)
    p = data.add_parser("annotate", help="phase-2 data: BERT quality annotator, scoring, per-language top-k")
    p.add_argument("config", nargs="?", help="YAML with AnnotateConfig keys (default configs/quality/local.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. input=data/p1 selection.budget=12.5e9")
    p.set_defaults(fn=_cmd_data_annotate)

    p = sub.add_parser("eval", help="code benchmarks (pass@k in a sandbox) and bits per byte of a checkpoint")
    p.add_argument("config", nargs="?", help="YAML with EvalConfig keys (snowjax/eval/run.py); optional")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--checkpoint", help="run dir, checkpoint dir, named phase checkpoint, or Hugging Face dir")
    p.add_argument("--benchmark", action="append", help="humaneval, or NAME=FILE for humaneval+/mbpp+/evoeval/...")
    p.add_argument("--n-samples", type=int, help="completions per problem (default 1: greedy pass@1)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--limit", type=int, help="first N problems of each benchmark")
    p.add_argument("--out", help="output directory (default: <checkpoint>/eval)")
    p.set_defaults(fn=_cmd_eval)

    export = sub.add_parser("export", help="convert checkpoints to other formats")
    export_sub = export.add_subparsers(dest="export_command", required=True)
    p = export_sub.add_parser("hf", help="write a Hugging Face LlamaForCausalLM directory (safetensors + tokenizer)")
    p.add_argument("--checkpoint", required=True, help="run dir, checkpoints/ dir, step dir or named phase checkpoint")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", help="YAML with the model (default: the run's config.yaml found above the checkpoint)")
    p.add_argument("--tokenizer", help="tokenizer.json or a dataset dir (default: beside the run or its datasets)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--max-shard-size", default="5GB", help="split weights into shards above this (e.g. 2GB)")
    p.add_argument("--overwrite", action="store_true", help="replace weight files already in --out")
    p.set_defaults(fn=_cmd_export_hf)

    imp = sub.add_parser("import", help="convert other formats to checkpoints")
    imp_sub = imp.add_subparsers(dest="import_command", required=True)
    p = imp_sub.add_parser("hf", help="Hugging Face Llama directory -> step-0 checkpoint + model.yaml to train from")
    p.add_argument("--hf", required=True, help="directory with config.json and *.safetensors")
    p.add_argument("--out", required=True, help="new checkpoint directory")
    p.add_argument("--param-dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--no-scan-layers", action="store_true", help="store layers unstacked (model.scan_layers: false)")
    p.set_defaults(fn=_cmd_import_hf)

    p = sub.add_parser("serve", help="OpenAI-compatible completions server over a checkpoint (request batching)")
    p.add_argument("--checkpoint", required=True, help="run dir, checkpoint dir, named phase checkpoint, or HF dir")
    p.add_argument("--config", help="YAML with the model when none is found beside the checkpoint")
    p.add_argument("--tokenizer", help="tokenizer.json (default: beside the checkpoint or its datasets)")
    p.add_argument("--model-name", help="model id in /v1/models and replies (default: the checkpoint's name)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, help="most prompts x n per generate call (default 32)")
    p.add_argument("--batch-wait-ms", type=float, help="a batch starts after this long with no new request (10)")
    p.add_argument("--max-batch-wait-ms", type=float, help="...or once its oldest request waited this long (50)")
    p.add_argument("--pad-multiple", type=int, help="prompt/cache lengths round up to this (default 32)")
    p.add_argument("--default-max-tokens", type=int, help="max_tokens of requests that give none (default 256)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="compute dtype (default: the model's)")
    p.set_defaults(fn=_cmd_serve)

    p = data.add_parser("synth", help="phase-3 synthetic documents from a teacher LLM (OpenAI-compatible endpoint)")
    p.add_argument("config", help="YAML with SynthConfig keys (e.g. configs/synth/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seeds.path=... teacher.base_url=...")
    p.set_defaults(fn=_cmd_data_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except ConfigError as e:
        log.error("config error: %s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
