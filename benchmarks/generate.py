"""Greedy decoding throughput on this CPU: snowjax's KV-cache ``Generator`` against transformers' ``generate()``.

What is timed, per batch size, is a whole greedy generation of ``new`` tokens after a
prompt of ``prompt`` tokens (defaults 128 and 128), on the same random weights:

- **snowjax**: ``snowjax.generate.Generator(cfg, params).generate(prompts,
  SamplingConfig(max_new_tokens=new))`` (temperature 0: argmax), with ``cfg`` the 134m
  model config (``configs/model/134m.yaml``) and the parameters read back from the
  Hugging Face export below (``hf_to_params``, bitwise the exported values).
- **transformers** (the baseline): ``LlamaForCausalLM.from_pretrained(export)`` in float32
  with its default (SDPA) attention and dynamic KV cache, ``model.generate(ids,
  attention_mask=ones, do_sample=False, max_new_tokens=new, min_new_tokens=new)`` under
  ``torch.inference_mode()``.

The weights are a ``Decoder(cfg)`` initialised from a seed with ``init_std`` 0.15 (not the
config's 0.02: at 0.02 the tied embedding dominates the residual and greedy decoding repeats
one token, which would make the token comparison below meaningless; speed does not depend
on the values), exported with ``snowjax.interop.hf.params_to_hf`` + ``hf_config_dict`` +
``save_safetensors``. Prompts are random ids in [4, vocab), all of length ``prompt``
(no padding on either side).

Both sides run in float32 (XLA:CPU's bf16 decode step was slower than its fp32 one, even on an
AMX-capable Xeon), so the config's ``dtype: bfloat16``
is overridden to ``float32`` (its parameters are fp32 already).

Equal work: both sides must produce exactly ``new`` tokens per row. transformers is held to
it by ``min_new_tokens``; snowjax stops at EOS (id 0), so the report checks that every
snowjax row ran to ``max_new_tokens`` (finish reason "length") and marks the row otherwise.
The greedy tokens of the two sides are compared row by row (they should agree in fp32).

Timing: each side first runs one untimed generation of the full shape and one of a single
new token (snowjax: compilation excluded; transformers: a warm-up call), then ``repeats``
times: a generation of 1 new token (**prefill**: the prompt forward and the first token) and
one of ``new`` tokens (**total**). Medians are reported; **decode** = total - prefill, and
decode tokens/s = (new - 1) x batch / decode (the first token comes from the prefill);
new tokens/s = new x batch / total (end to end).

Roofline: at batch 1 a decode step is memory-bandwidth bound: every weight is read once per
step (the tied embedding once, as the output head; ``weight bytes`` = parameters x 4). The
report gives each side's implied weight-read rate (weight bytes x decode steps/s) beside the
machine's bandwidth measured in the same run: a 512 MiB numpy copy (read + write bytes) and a
~470 MB float32 matrix-vector product in each framework (the weight layout its model uses:
W (in, out) for snowjax's decode weights (``inference_weights``), W (out, in) for ``F.linear``), before and
after the timed generations.

Every measurement runs in its own child process, one after the other (snowjax, then
transformers, per batch size), so the two frameworks' thread pools never compete. Results go
to ``<out>/generate_cpu.json`` and ``<out>/generate_cpu.md``.

Usage::

    python benchmarks/generate.py             # batch 1 and 8, prompt 128, 128 new tokens, 3 repeats (~8 min)
    python benchmarks/generate.py --quick     # 32 new tokens, 1 repeat (~2 min)
    python benchmarks/generate.py --batches 8 --frameworks snowjax --no-save
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _machine import machine_info, package_version, system_busy_seconds  # benchmarks/_machine.py

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIG = REPO / "configs/model/134m.yaml"
FRAMEWORKS = ("snowjax", "transformers")
WORKER_TIMEOUT_S = 1800
IDLE_THRESHOLD = 0.10  # wait for other processes to use less than this share of all cores
CONTENTION_WARN = 0.05  # other processes' share of all cores above which the report warns
COPY_MIB = 512  # numpy copy size for the bandwidth figure
MATVEC_COLUMNS = 153_600  # 768 x 153600 float32 = 472 MB, the size of the 134m model's weights


@dataclasses.dataclass
class Case:
    """One measurement: one framework generating for one batch size."""

    framework: str  # "snowjax" or "transformers"
    batch: int
    prompt: int  # prompt length in tokens
    new: int  # new tokens per row
    repeats: int  # timed (prefill, total) pairs
    hf_dir: str  # the exported weights (and config.json) both sides load
    init_std: float
    seed: int


# ----------------------------------------------------------------------------- shared helpers


def model_config(init_std: float) -> Any:
    """The 134m ``ModelConfig`` (``configs/model/134m.yaml``) with float32 compute and the benchmark's ``init_std``."""
    import yaml

    from snowjax.config import ModelConfig

    raw = yaml.safe_load(MODEL_CONFIG.read_text())
    return dataclasses.replace(ModelConfig(**raw), dtype="float32", param_dtype="float32", init_std=init_std)


def prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """``batch`` prompts of ``length`` random ids in [4, vocab) (no special tokens), the same on both sides."""
    import numpy as np

    return np.random.default_rng(seed).integers(4, vocab, (batch, length)).tolist()


def weight_bytes(cfg: Any) -> int:
    """Bytes of float32 weights one decode step reads: every parameter once (the tied embedding as the head)."""
    from snowjax.model.decoder import count_params

    return 4 * count_params(cfg)


def kv_bytes_per_slot(cfg: Any, batch: int) -> int:
    """Bytes of float32 keys and values one cache slot holds across layers and rows."""
    return 2 * 4 * cfg.num_layers * batch * cfg.num_kv_heads * cfg.resolved_head_dim


def numpy_copy_gbps(mib: int = COPY_MIB, iters: int = 5) -> float:
    """Best GB/s of ``np.copyto`` over ``mib`` MiB, counting the bytes read and written."""
    import numpy as np

    src = np.ones(mib * 2**18, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_seconds(lambda: np.copyto(dst, src)) for _ in range(iters))
    return 2 * src.nbytes / best / 1e9


def steal_seconds() -> float | None:
    """CPU seconds the hypervisor has taken from this virtual machine since boot (``/proc/stat``), if known.

    ``system_busy_seconds`` counts them as busy, so they are part of "other CPU"; reported on their
    own because on a shared host they can slow a run as much as a local process does.
    """
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed_runs(prefill: Callable[[], Any], full: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """Warm both calls up, then time ``repeats`` (prefill, full) pairs; also this and other processes' CPU share."""
    t0 = time.perf_counter()
    full()
    first_call_s = time.perf_counter() - t0
    prefill()
    prefill_times, total_times = [], []
    cpu0, busy0, steal0, wall0 = os.times(), system_busy_seconds(), steal_seconds(), time.perf_counter()
    result = None
    for _ in range(repeats):
        prefill_times.append(_seconds(prefill))
        t = time.perf_counter()
        result = full()
        total_times.append(time.perf_counter() - t)
    cpu1, busy1, steal1, wall1 = os.times(), system_busy_seconds(), steal_seconds(), time.perf_counter()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    capacity = max(wall1 - wall0, 1e-9) * (os.cpu_count() or 1)
    other = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0 - cpu_s) / capacity)
    steal = None if steal0 is None or steal1 is None else (steal1 - steal0) / capacity
    return {
        "first_call_s": first_call_s,
        "prefill_times_s": prefill_times,
        "total_times_s": total_times,
        "cpu_util": cpu_s / capacity,
        "other_cpu_util": other,
        "steal_util": steal,
        "result": result,
    }


def summarize(case: Case, run: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """Medians, decode rate and the implied weight-read rate of one case."""
    prefill = statistics.median(run["prefill_times_s"])
    total = statistics.median(run["total_times_s"])
    decode = max(total - prefill, 1e-9)
    steps_per_s = (case.new - 1) / decode
    wbytes = weight_bytes(cfg)
    return {
        "prefill_s": prefill,
        "total_s": total,
        "decode_s": decode,
        "decode_tokens_per_s": (case.new - 1) * case.batch / decode,
        "new_tokens_per_s": case.new * case.batch / total,
        "decode_steps_per_s": steps_per_s,
        "weight_bytes": wbytes,
        "weight_gbps": wbytes * steps_per_s / 1e9,
        "first_call_s": run["first_call_s"],
        "prefill_times_s": run["prefill_times_s"],
        "total_times_s": run["total_times_s"],
        "cpu_util": run["cpu_util"],
        "other_cpu_util": run["other_cpu_util"],
        "steal_util": run["steal_util"],
    }


# ----------------------------------------------------------------------------- workers


def prepare(out_dir: Path, init_std: float, seed: int) -> dict[str, Any]:
    """Initialise the random 134m decoder and write it as a Hugging Face directory in ``out_dir``."""
    from flax import nnx

    from snowjax.data.tokenizer import EOS_ID, PAD_ID
    from snowjax.interop.hf import hf_config_dict, params_to_hf, save_safetensors
    from snowjax.model.decoder import Decoder, count_params

    cfg = model_config(init_std)
    _, params = nnx.split(Decoder(cfg, nnx.Rngs(params=seed)))
    save_safetensors(params_to_hf(params, cfg, "float32"), out_dir, "5GB")
    (out_dir / "config.json").write_text(json.dumps(hf_config_dict(cfg, "float32"), indent=2) + "\n")
    generation = {"bos_token_id": EOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return {"params": count_params(cfg), "config": dataclasses.asdict(cfg)}


def jax_matvec_gbps(iters: int = 5, rows: int = 1, kernel: bool = False) -> float:
    """Best GB/s of a jitted float32 ``x (rows, 768)`` times ``W (768, MATVEC_COLUMNS)``, counting W's bytes.

    ``snowjax.generate._linear`` on (in, out) weights with the decode loop's XLA:CPU options
    (XLA's matrix-vector product: the machine's bandwidth figure), or with ``kernel`` as the
    decode step multiplies: snowjax's CPU kernel on packed column tiles where it builds
    (``snowjax.kernels``); ``rows``: the weight-streaming rate of a batch's step.
    """
    import jax
    import jax.numpy as jnp

    from snowjax.generate import _DECODE_CPU_OPTIONS, _linear
    from snowjax.kernels import cpu_kernels_available, pack_columns

    w = jnp.ones((768, MATVEC_COLUMNS), jnp.float32)
    if kernel and cpu_kernels_available():
        w = pack_columns(w).block_until_ready()
    x = jnp.ones((rows, 768), jnp.float32)
    f = jax.jit(_linear, compiler_options=_DECODE_CPU_OPTIONS if jax.default_backend() == "cpu" else None)
    f(x, w).block_until_ready()
    best = min(_seconds(lambda: f(x, w).block_until_ready()) for _ in range(iters))
    return w.nbytes / best / 1e9


def run_snowjax(case: Case) -> dict[str, Any]:
    """Time ``Generator.generate`` (greedy) on the exported weights; XLA's matvec bandwidth in the same process."""
    import jax

    from snowjax.generate import Generator, SamplingConfig
    from snowjax.interop.hf import hf_to_params, load_safetensors
    from snowjax.kernels import cpu_kernels_available

    cfg = model_config(case.init_std)
    bandwidth = {"numpy_copy_before": numpy_copy_gbps(), "matvec_before": jax_matvec_gbps()}
    params = hf_to_params(load_safetensors(Path(case.hf_dir)), cfg)
    gen = Generator(cfg, params)
    batch = prompts(case.batch, case.prompt, cfg.vocab_size, case.seed)
    run = timed_runs(
        lambda: gen.generate(batch, SamplingConfig(max_new_tokens=1)),
        lambda: gen.generate(batch, SamplingConfig(max_new_tokens=case.new)),
        case.repeats,
    )
    bandwidth.update(numpy_copy_after=numpy_copy_gbps(), matvec_after=jax_matvec_gbps())
    thin = max(jax_matvec_gbps(rows=case.batch, kernel=True) for _ in range(2)) if case.batch > 1 else None
    kernels = gen.weights is not None and cfg.dtype == "float32" and cpu_kernels_available()  # snowjax.kernels
    out = summarize(case, run, cfg)
    generations = run["result"]
    out.update(
        tokens=[g.tokens for g in generations],
        finish_reasons=[g.finish_reason for g in generations],
        bandwidth_gbps=bandwidth,
        batch_matmul_gbps=thin,
        matmul="snowjax's thin-matmul kernel" if kernels else "XLA dots",
        attends_filled_slots_only=kernels,
        kv_cache_slots=_cache_slots(gen, case),
        kv_bytes_per_step=kv_bytes_per_slot(cfg, case.batch) * _cache_slots(gen, case),
        xla_flags=os.environ.get("XLA_FLAGS", ""),  # as in effect, including any snowjax adds on import
        device=jax.devices()[0].device_kind,
        versions={"jax": jax.__version__, "jaxlib": package_version("jaxlib"), "flax": package_version("flax")},
    )
    return out


def _cache_slots(gen: Any, case: Case) -> int:
    """The KV cache length snowjax allocates (prompt + new tokens, rounded up to its pad multiple)."""
    from snowjax.generate import _bucket

    return _bucket(_bucket(case.prompt, gen.pad_multiple) + case.new, gen.pad_multiple)


def torch_matvec_gbps(iters: int = 5, rows: int = 1) -> float:
    """Best GB/s of ``F.linear(x (rows, 768), W (MATVEC_COLUMNS, 768))`` in float32, counting W's bytes."""
    import torch

    w = torch.ones(MATVEC_COLUMNS, 768)
    x = torch.ones(rows, 768)
    with torch.inference_mode():
        torch.nn.functional.linear(x, w)
        best = min(_seconds(lambda: torch.nn.functional.linear(x, w)) for _ in range(iters))
    return w.numel() * 4 / best / 1e9


def run_transformers(case: Case) -> dict[str, Any]:
    """Time ``LlamaForCausalLM.generate`` (greedy, exactly ``new`` tokens) on the export; torch's matvec bandwidth."""
    import torch
    import transformers

    from snowjax.data.tokenizer import EOS_ID, PAD_ID

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = model_config(case.init_std)
    bandwidth = {"numpy_copy_before": numpy_copy_gbps(), "matvec_before": torch_matvec_gbps()}
    model = transformers.LlamaForCausalLM.from_pretrained(case.hf_dir, dtype=torch.float32).eval()
    ids = torch.tensor(prompts(case.batch, case.prompt, cfg.vocab_size, case.seed), dtype=torch.int64)
    mask = torch.ones_like(ids)

    def generate(n: int) -> list[list[int]]:
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                eos_token_id=EOS_ID,
                pad_token_id=PAD_ID,
            )
        return out[:, ids.shape[1] :].tolist()

    run = timed_runs(lambda: generate(1), lambda: generate(case.new), case.repeats)
    bandwidth.update(numpy_copy_after=numpy_copy_gbps(), matvec_after=torch_matvec_gbps())
    thin = max(torch_matvec_gbps(rows=case.batch) for _ in range(2)) if case.batch > 1 else None
    out = summarize(case, run, cfg)
    out.update(
        tokens=run["result"],
        finish_reasons=["length"] * case.batch,  # min_new_tokens = max_new_tokens: never EOS
        bandwidth_gbps=bandwidth,
        batch_matmul_gbps=thin,
        attention=str(getattr(model.config, "_attn_implementation", None) or "sdpa"),
        threads=torch.get_num_threads(),
        versions={"torch": torch.__version__, "transformers": transformers.__version__},
    )
    return out


# ----------------------------------------------------------------------------- driver


def wait_for_idle(max_wait_s: float, threshold: float = IDLE_THRESHOLD, window_s: float = 3.0) -> float:
    """Wait (up to ``max_wait_s``) until other processes use under ``threshold`` of all cores over ``window_s``.

    Returns the seconds waited; gives up quietly at the limit (the report then shows the contention).
    """
    t0 = time.perf_counter()
    while True:
        before = system_busy_seconds()
        if before is None:
            return 0.0
        time.sleep(window_s)
        busy = (system_busy_seconds() or before) - before
        if busy / (window_s * (os.cpu_count() or 1)) < threshold or time.perf_counter() - t0 >= max_wait_s:
            return time.perf_counter() - t0


def run_in_child(job: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run one worker job (``prepare`` or a case) in a fresh interpreter and return its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            json.dumps(job),
            "--result-file",
            str(result_path),
        ]
        proc = subprocess.run(cmd, env=env, timeout=WORKER_TIMEOUT_S, check=False)
        if proc.returncode != 0 or not result_path.exists():
            raise RuntimeError(
                f"worker {job.get('kind')} {job.get('case', {})} failed with exit code {proc.returncode}"
            )
        return json.loads(result_path.read_text())


def run_case(case: Case, env: dict[str, str], idle_wait_s: float) -> dict[str, Any]:
    waited = wait_for_idle(idle_wait_s) if idle_wait_s > 0 else 0.0
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    result = run_in_child({"kind": "case", "case": dataclasses.asdict(case)}, env)
    result.update(
        framework=case.framework,
        batch=case.batch,
        prompt=case.prompt,
        new=case.new,
        repeats=case.repeats,
        wall_s=time.perf_counter() - t0,
        idle_wait_s=waited,
        loadavg_1m_before=load_before[0],
        loadavg_1m_after=os.getloadavg()[0],
    )
    return result


def compare_tokens(ours: Sequence[Sequence[int]], theirs: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Rows whose greedy tokens are identical, and for the others the first position that differs."""
    first_diff = []
    for a, b in zip(ours, theirs, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        first_diff.append(None if list(a) == list(b) else n)
    return {"rows": len(first_diff), "rows_equal": sum(d is None for d in first_diff), "first_difference": first_diff}


def pair_up(results: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per batch size measured on both sides: speed ratios, equal-work and token-agreement checks."""
    by_key = {(r["batch"], r["framework"]): r for r in results}
    out = {}
    for batch in dict.fromkeys(r["batch"] for r in results):
        jx, pt = by_key.get((batch, "snowjax")), by_key.get((batch, "transformers"))
        if not (jx and pt):
            continue
        equal_work = all(len(t) == jx["new"] for t in jx["tokens"]) and all(len(t) == pt["new"] for t in pt["tokens"])
        out[batch] = {
            "decode_ratio": jx["decode_tokens_per_s"] / pt["decode_tokens_per_s"],
            "total_ratio": pt["total_s"] / jx["total_s"],
            "prefill_ratio": pt["prefill_s"] / jx["prefill_s"],
            "equal_work": equal_work,
            "tokens": compare_tokens(jx["tokens"], pt["tokens"]),
        }
    return out


def bandwidth_gbps(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Best bandwidth figures over the run: numpy copy (read + write) and each framework's matvec."""
    out: dict[str, float] = {}
    for r in results:
        b = r["bandwidth_gbps"]
        out["numpy_copy"] = max(out.get("numpy_copy", 0.0), b["numpy_copy_before"], b["numpy_copy_after"])
        key = f"{r['framework']}_matvec"
        out[key] = max(out.get(key, 0.0), b["matvec_before"], b["matvec_after"])
    return out


def format_table(results: Sequence[dict[str, Any]], pairs: dict[int, dict[str, Any]], machine_gbps: float) -> str:
    head = (
        "| batch | framework | prefill (s) | decode (s) | decode tokens/s | total (s) | new tokens/s "
        "| snowjax/transformers decode | weight reads GB/s | % of machine GB/s | tokens agree | other CPU |"
    )
    rows = [head, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        p = pairs.get(r["batch"])
        ratio = agree = ""
        if p and r["framework"] == "snowjax":
            ratio = f"**{p['decode_ratio']:.2f}x**" + ("" if p["equal_work"] else " (unequal work!)")
            t = p["tokens"]
            agree = f"{t['rows_equal']}/{t['rows']} rows"
        short = [
            n for n, f in zip(r["tokens"], r["finish_reasons"], strict=True) if len(n) != r["new"] or f != "length"
        ]
        name = r["framework"] + (f" ({len(short)} rows stopped early)" if short else "")
        rows.append(
            f"| {r['batch']} | {name} | {r['prefill_s']:.3f} | {r['decode_s']:.3f} | {r['decode_tokens_per_s']:.1f} "
            f"| {r['total_s']:.3f} | {r['new_tokens_per_s']:.1f} | {ratio} | {r['weight_gbps']:.1f} "
            f"| {100 * r['weight_gbps'] / machine_gbps:.0f}% | {agree} | {_contention(r)} |"
        )
    return "\n".join(rows)


def _contention(r: dict[str, Any]) -> str:
    """Other processes' share of the machine's CPU during the timed runs, and the hypervisor's steal within it."""
    text = f"{100 * (r['other_cpu_util'] or 0):.0f}%"
    steal = r.get("steal_util") or 0.0
    return text + (f" (steal {100 * steal:.0f}%)" if steal >= 0.005 else "")


def goal_lines(report: dict[str, Any]) -> list[str]:
    """The goal (>= 2x transformers' decode tokens/s per batch), the batch-1 bandwidth bound, the batch-B matmul cap."""
    lines = []
    pairs, bw = report["pairs"], report["bandwidth_gbps"]
    best_bw = max(bw.values())
    by_key = {(r["batch"], r["framework"]): r for r in report["results"]}
    for batch, p in sorted(pairs.items(), key=lambda kv: int(kv[0])):
        met = "met" if p["decode_ratio"] >= 2.0 else "not met"
        lines.append(f"- batch {batch}: snowjax decodes {p['decode_ratio']:.2f}x transformers' tokens/s: goal {met}.")
        pt = by_key[(int(batch), "transformers")]
        need = 2 * pt["weight_gbps"]
        if int(batch) == 1:
            lines.append(
                f"  At batch 1, 2x transformers means {2 * pt['decode_tokens_per_s']:.1f} tokens/s, i.e. reading "
                f"{pt['weight_bytes'] / 1e6:.0f} MB of weights {2 * pt['decode_steps_per_s']:.1f} times a second = "
                f"{need:.1f} GB/s, against {best_bw:.1f} GB/s, the best bandwidth measured in this run "
                f"(the memory-bound ceiling is {best_bw * 1e9 / pt['weight_bytes']:.1f} tokens/s): "
                + ("within reach." if need <= best_bw else "beyond this machine's bandwidth in float32.")
            )
        jx = by_key.get((int(batch), "snowjax"))
        if int(batch) > 1 and jx and jx.get("batch_matmul_gbps") and pt.get("batch_matmul_gbps"):
            rate = jx["batch_matmul_gbps"]
            ceiling = int(batch) * rate * 1e9 / jx["weight_bytes"]
            want = 2 * pt["decode_tokens_per_s"]
            lines.append(
                f"  At batch {batch} a step multiplies {batch} rows by every weight. One ({batch}, 768) x (768, "
                f"{MATVEC_COLUMNS}) float32 product streams its weights at {rate:.1f} GB/s in snowjax (as its decode "
                f"step multiplies: {jx.get('matmul', 'XLA dots')}) and {pt['batch_matmul_gbps']:.1f} GB/s in torch "
                "(`F.linear`), against "
                f"{bw.get('snowjax_matvec', 0.0):.1f} GB/s for one row: the step's matmuls alone cap snowjax at "
                f"{ceiling:.0f} tokens/s (weights only, no attention or other work); 2x transformers is "
                f"{want:.0f} tokens/s: " + ("under that cap." if want <= ceiling else "above that cap.")
            )
    return lines


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    m, v, s, bw = report["machine"], report["versions"], report["settings"], report["bandwidth_gbps"]
    best_bw = max(bw.values())
    cfg = report["model"]
    jx = next((r for r in report["results"] if r["framework"] == "snowjax"), None)
    pt = next((r for r in report["results"] if r["framework"] == "transformers"), None)
    any_r = report["results"][0]
    lines = [
        "# Greedy decoding on CPU: snowjax vs transformers",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; {m['platform']}; measured {m['date']}.",
        f"Versions: python {m['python']}, " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        f"Model: `configs/model/134m.yaml` ({report['params'] / 1e6:.1f}M parameters, {cfg['num_layers']} layers, "
        f"hidden {cfg['hidden_size']}, {cfg['num_heads']} heads, vocab {cfg['vocab_size']}, tied embeddings) in "
        "**float32** on both sides (the config's bf16 compute is overridden: XLA:CPU's bf16 decode is slower), random "
        f"weights (init_std {s['init_std']}, seed {s['seed']}) exported to Hugging Face format and loaded by both. "
        f"Prompt {s['prompt']} random tokens, {s['new']} new tokens per row, greedy; median of {s['repeats']} runs.",
        "",
        format_table(report["results"], report["pairs"], best_bw),
        "",
        "prefill = a generation of 1 new token (the prompt's forward and the first token); total = a generation of "
        f"{s['new']} new tokens; decode = total - prefill; decode tokens/s = {s['new'] - 1} x batch / decode; "
        f"new tokens/s = {s['new']} x batch / total. Compilation (snowjax) and a first call (transformers) are "
        "excluded. 'tokens agree': rows whose greedy tokens are identical on both sides.",
        "",
        "## Goal and roofline",
        "",
        *goal_lines(report),
        "",
        f"Weight bytes per decode step: {any_r['weight_bytes'] / 1e6:.0f} MB (every float32 parameter read once; the "
        "tied embedding once, as the output head). 'weight reads GB/s' = weight bytes x decode steps/s; at batch 8 "
        "one step yields 8 tokens, so it is the same weights for 8x the tokens and the step is no longer purely "
        "memory bound. Bandwidth measured in this run (best of before and after each case): "
        + ", ".join(f"{k.replace('_', ' ')} {val:.1f} GB/s" for k, val in bw.items())
        + f"; '% of machine GB/s' is against the best of these ({best_bw:.1f} GB/s).",
        "",
        "KV cache reads come on top of the weights: "
        + (
            (
                f"snowjax (decode-attention kernel) over the filled slots of its preallocated {jx['kv_cache_slots']}"
                "-slot cache, "
                if jx.get("attends_filled_slots_only")
                else f"snowjax over its whole preallocated cache ({jx['kv_cache_slots']} slots, "
                f"{jx['kv_bytes_per_step'] / jx['batch'] / 1e6:.1f} MB per row per step), "
            )
            if jx
            else ""
        )
        + "transformers over the filled part only (prompt + tokens so far).",
        "",
        f"Command: `{s['command']}`.",
        "",
    ]
    if jx:
        lines.append(
            f"- snowjax: decode matmuls by {jx.get('matmul', 'XLA dots')}; XLA_FLAGS=`{jx['xla_flags']}`; "
            f"device {jx['device']}."
        )
    if pt:
        lines.append(f"- transformers: {pt['threads']} torch threads, {pt['attention']} attention, dynamic cache.")
    busy = [r["other_cpu_util"] for r in report["results"] if r.get("other_cpu_util") is not None]
    if busy and max(busy) > CONTENTION_WARN:
        lines += [
            "",
            f"Note: other processes used up to {100 * max(busy):.0f}% of the machine's CPU time during the timed "
            "runs (`other_cpu_util` in the JSON; it includes time the hypervisor stole from this virtual machine, "
            "`steal_util`), so absolute rates are low-biased for those rows.",
        ]
    path.write_text("\n".join(lines) + "\n")


def build_cases(args: argparse.Namespace, hf_dir: str) -> list[Case]:
    new = args.new or (32 if args.quick else 128)
    repeats = args.repeats or (1 if args.quick else 3)
    return [
        Case(fw, batch, args.prompt, new, repeats, hf_dir, args.init_std, args.seed)
        for batch in args.batches
        for fw in args.frameworks
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="32 new tokens and 1 timed run per case (~2 min)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results", help="directory for the JSON and table")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=list(FRAMEWORKS))
    p.add_argument("--prompt", type=int, default=128, help="prompt length in tokens")
    p.add_argument("--new", type=int, default=0, help="new tokens per row (0: 128, or 32 with --quick)")
    p.add_argument("--repeats", type=int, default=0, help="timed runs per case (0: 3, or 1 with --quick)")
    p.add_argument("--init-std", type=float, default=0.15, help="std of the random weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the prompts")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="before each case, wait up to this long for other processes to leave the CPU (0: don't wait)",
    )
    p.add_argument("--no-save", action="store_true", help="print the table only")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker_main(spec: str, result_file: Path) -> None:
    """Child-process entry: prepare the weights or run one case, and write the result as JSON."""
    job = json.loads(spec)
    if job["kind"] == "prepare":
        result = prepare(Path(job["out_dir"]), job["init_std"], job["seed"])
    else:
        case = Case(**job["case"])
        result = (run_snowjax if case.framework == "snowjax" else run_transformers)(case)
    result_file.write_text(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.result_file)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # every load is a local directory
    results = []
    with tempfile.TemporaryDirectory() as hf_dir:
        print(f"[prepare] random 134m weights (init_std {args.init_std}) -> {hf_dir}", file=sys.stderr, flush=True)
        prep = run_in_child({"kind": "prepare", "out_dir": hf_dir, "init_std": args.init_std, "seed": args.seed}, env)
        for case in build_cases(args, hf_dir):
            print(
                f"[{case.framework} batch {case.batch}] prompt {case.prompt}, {case.new} new tokens, "
                f"{case.repeats} timed run(s)",
                file=sys.stderr,
                flush=True,
            )
            r = run_case(case, env, args.idle_wait)
            print(
                f"[{case.framework} batch {case.batch}] prefill {r['prefill_s']:.3f} s, decode "
                f"{r['decode_tokens_per_s']:.1f} tokens/s, total {r['total_s']:.2f} s, other processes "
                f"{_contention(r)} CPU ({r['wall_s']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            results.append(r)
    versions: dict[str, str] = {}
    for r in results:
        versions.update(r["versions"])
    cfg = prep["config"]
    pairs = pair_up(results)
    report = {
        "machine": machine_info(),
        "versions": versions,
        "settings": {
            "quick": args.quick,
            "command": " ".join(["python", "benchmarks/generate.py", *(argv if argv is not None else sys.argv[1:])]),
            "prompt": args.prompt,
            "new": results[0]["new"] if results else args.new,
            "repeats": results[0]["repeats"] if results else args.repeats,
            "init_std": args.init_std,
            "seed": args.seed,
            "xla_flags": env.get("XLA_FLAGS", ""),
        },
        "model": cfg,
        "params": prep["params"],
        "bandwidth_gbps": bandwidth_gbps(results),
        "results": results,
        "pairs": pairs,
    }
    print(format_table(results, pairs, max(report["bandwidth_gbps"].values())))
    for line in goal_lines(report):
        print(line)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "generate_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
        write_markdown(args.out / "generate_cpu.md", report)
        print(f"wrote {args.out / 'generate_cpu.json'} and {args.out / 'generate_cpu.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
