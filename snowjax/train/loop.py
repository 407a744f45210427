"""``snowjax train``: config -> plan -> mesh -> state (fresh or resumed) -> phases of steps -> checkpoints.

A run is a curriculum of phases (``snowjax.curriculum``; a plain config is one phase).
Phases run in order on one global step counter. At a phase's end the loop writes a
periodic checkpoint marked "done", a named checkpoint (``phase_checkpoints/<name>``,
e.g. alpha / beta / final) and the phase's planned-vs-seen token report. The next
phase starts from scratch or from that state, with the optimizer state reset or kept.

A restarted run resumes from the newest readable checkpoint: inside a phase with the
loader's exact iterator state, or at a boundary with the next phase's hand-off.
``only_phase`` (``--phase NAME``) re-runs one phase from its start checkpoint, moving
what a previous attempt left after that point to ``superseded/``.

The loop keeps the device busy: a step is dispatched before the previous
step's metrics are read back, and metrics are fetched only every
``train.log_every`` steps or before a checkpoint (a checkpoint is never written
from a state whose loss was not checked to be finite).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import signal
import time
import zlib
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from snowjax.config import CheckpointConfig, Config, ConfigError, dump_yaml, validate
from snowjax.curriculum import PhasePlan, phase_configs, plan_curriculum, plan_table, write_phase_report
from snowjax.data.mixture import batch_accounting
from snowjax.distributed import ClusterSpec, detect_environment, initialize
from snowjax.parallel import make_mesh, to_global_batch
from snowjax.train.checkpoint import Checkpointer
from snowjax.train.memory import estimate_train_memory
from snowjax.train.metrics import MetricsLogger, Throughput, flops_per_token, resolve_peak_flops
from snowjax.train.optimizer import make_optimizer
from snowjax.train.schedules import make_schedule
from snowjax.train.state import TrainState, abstract_train_state, init_train_state, param_count
from snowjax.train.step import jit_train_step, make_train_step

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    checkpoint_dir: Path
    step: int  # optimizer steps completed
    loss: float | None  # loss of the last logged window
    stopped_by_signal: bool = False
    phase: str | None = None  # the phase the run was in when it returned
    reports: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # phase -> planned/seen report


class _StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (save, then exit)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # second signal: give up waiting
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: saving a checkpoint after this step, then exiting", signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def batch_fingerprint(batch: dict[str, np.ndarray]) -> int:
    """CRC32 of this host's input tokens: lets a resumed run prove it saw the same batches."""
    return zlib.crc32(np.ascontiguousarray(batch["inputs"]).tobytes())


def _check_vocab(cfg: Config) -> None:
    for ph in phase_configs(cfg):
        for src in ph.sources:
            meta = Path(src.path) / "snowjax_dataset.json"
            if not meta.exists():
                continue
            vocab = json.loads(meta.read_text()).get("vocab_size")
            if vocab and vocab > cfg.model.vocab_size:
                raise ConfigError(
                    f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer vocabulary {vocab} of "
                    f"source {src.name!r} ({meta})"
                )


def _write_run_files(cfg: Config, run_dir: Path, plans: list[PhasePlan]) -> None:
    if jax.process_index() != 0:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    (run_dir / "plan.md").write_text(plan_table(plans) + "\n")
    plan_json = [
        {
            "phase": p.name,
            "checkpoint": p.checkpoint_name,
            "start_step": p.start_step,
            "end_step": p.end_step,
            "global_batch_size": p.global_batch_size,
            "seq_len": p.seq_len,
            "budget_tokens": p.budget,
            "sources": p.source_names,
            "languages": p.languages,
            "mixing": p.mixing.to_json(),
            "planned_source_tokens": p.planned_source_tokens().tolist(),
            "planned_language_tokens": p.planned_language_tokens(),
        }
        for p in plans
    ]
    (run_dir / "plan.json").write_text(json.dumps(plan_json, indent=2) + "\n")


@dataclasses.dataclass
class _Run:
    """What every phase of a run shares."""

    cfg: Config
    run_dir: Path
    mesh: jax.sharding.Mesh
    plans: list[PhasePlan]
    graphdef: Any
    tx: Any
    abstract_state: TrainState
    shardings: TrainState
    checkpointer: Checkpointer
    metrics_logger: MetricsLogger | None = None

    def named(self, plan: PhasePlan) -> Checkpointer:
        cfg = CheckpointConfig(every_steps=1, keep_last=1, async_save=False)
        return Checkpointer(self.run_dir / "phase_checkpoints" / str(plan.checkpoint_name), cfg)

    def data_iter(self, plan: PhasePlan) -> grain.DatasetIterator:
        ds: grain.IterDataset = plan.dataset(self.cfg, jax.process_index(), jax.process_count())
        if self.cfg.data.prefetch:
            ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=self.cfg.data.prefetch)
        return iter(ds)


@dataclasses.dataclass
class _Seen:
    """Tokens a phase has drawn: restored global totals plus what this process drew since."""

    base: np.ndarray  # global totals at (re)start: sources..., languages..., padding
    local: np.ndarray
    num_sources: int

    @classmethod
    def zeros(cls, plan: PhasePlan) -> _Seen:
        n = len(plan.sources) + len(plan.languages) + 1
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int64), len(plan.sources))

    @classmethod
    def from_meta(cls, plan: PhasePlan, meta: dict[str, Any]) -> _Seen:
        seen = cls.zeros(plan)
        s = meta["seen"]
        seen.base = np.asarray([*s["source_tokens"], *s["language_tokens"], s["padding"]], np.int64)
        if seen.base.shape != seen.local.shape:
            raise ValueError("the checkpoint's token counts do not match this phase's sources and languages")
        return seen

    def add(self, source_tokens: np.ndarray, language_tokens: np.ndarray, padding: int) -> None:
        n = self.num_sources
        self.local[:n] += source_tokens
        self.local[n:-1] += language_tokens
        self.local[-1] += padding

    def global_totals(self, steps_done: int) -> dict[str, Any]:
        """All processes' counts summed (a collective: every process must call it at the same step)."""
        local = self.local
        if jax.process_count() > 1:
            local = np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), -1).sum(axis=0)
        total = self.base + local
        n = self.num_sources
        return {
            "source_tokens": total[:n].tolist(),
            "language_tokens": total[n:-1].tolist(),
            "padding": int(total[-1]),
            "steps": steps_done,
        }


def train(cfg: Config, only_phase: str | None = None, cluster: ClusterSpec | None = None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; returns where things are.

    ``only_phase``: run just that phase, from the named checkpoint of the phase before it
    (or from scratch for a first phase), replacing what an earlier attempt wrote after it.
    ``cluster``: how this process joins a multi-process run (default: detected from the
    environment, ``snowjax.distributed``). Every process logs who it is; only process 0
    writes the run files, metrics and reports; all write their checkpoint shards.
    """
    initialize(cluster if cluster is not None else detect_environment())
    validate(cfg, num_devices=jax.device_count())
    _check_vocab(cfg)
    plans = plan_curriculum(cfg, jax.process_count())
    run_dir = Path(cfg.run_dir).absolute()
    _write_run_files(cfg, run_dir, plans)
    for line in plan_table(plans).splitlines():
        log.info("plan: %s", line)
    mesh = make_mesh(cfg.mesh)
    log.info(
        "mesh %s over %d devices (%s); process %d of %d",
        dict(mesh.shape),
        mesh.size,
        jax.devices()[0].device_kind,
        jax.process_index(),
        jax.process_count(),
    )
    tx = make_optimizer(cfg.optimizer, 1.0)  # LR applied from the global step in the step function
    with jax.set_mesh(mesh):
        graphdef, abstract_state, shardings = abstract_train_state(cfg.model, tx, mesh)
        checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint)
        run = _Run(cfg, run_dir, mesh, plans, graphdef, tx, abstract_state, shardings, checkpointer)
        try:
            with MetricsLogger(
                run_dir, is_primary=jax.process_index() == 0, tensorboard=cfg.train.tensorboard
            ) as run.metrics_logger:
                return _run_phases(run, only_phase)
        finally:
            checkpointer.close()


def _run_phases(run: _Run, only_phase: str | None) -> TrainResult:
    plans = run.plans
    if only_phase is not None:
        names = [p.name for p in plans]
        if only_phase not in names:
            raise ConfigError(f"--phase: no phase {only_phase!r} (phases: {names})")
        k = names.index(only_phase)
        state = _rerun_start(run, plans[k])
        data_iter, seen, last = None, None, k
    else:
        k, state, data_iter, seen = _resume(run)
        last = len(plans) - 1
    result = TrainResult(run.run_dir, run.checkpointer.directory, plans[-1].end_step, None)
    if k > last:
        log.info("nothing to do: the run finished all %d phases (step %d)", len(plans), plans[-1].end_step)
    while k <= last:
        plan = plans[k]
        if data_iter is None:
            state = _phase_start_state(run, plan, state)
            data_iter, seen = run.data_iter(plan), _Seen.zeros(plan)
        assert seen is not None
        state, result = _run_phase(run, plan, state, data_iter, seen)
        if result.stopped_by_signal:
            return result
        data_iter, seen = None, None
        k += 1
    run.checkpointer.wait()
    return result


def _resume(run: _Run) -> tuple[int, TrainState | None, grain.DatasetIterator | None, _Seen | None]:
    """(phase index, state, data iterator, seen) to continue from; a fresh run is (0, None, None, None)."""
    ckpt, plans = run.checkpointer, run.plans
    existing = ckpt.all_steps()
    if existing and not run.cfg.checkpoint.resume:
        raise ConfigError(
            f"checkpoint.resume: false, but {ckpt.directory} already holds checkpoints {existing}; "
            "use a new run_dir or resume"
        )
    for step in reversed(existing):
        try:
            meta = ckpt.read_meta(step)
            if meta is None:  # saved before curricula: the single phase
                meta = {"phase": 0, "phase_name": plans[0].name, "done": step >= plans[0].end_step}
            k = int(meta["phase"])
            if k >= len(plans) or plans[k].name != meta["phase_name"]:
                raise ConfigError(
                    f"checkpoint {step} belongs to phase {meta['phase_name']!r} (#{k}), which this config does not "
                    f"have at that place (phases: {[p.name for p in plans]})"
                )
            plan = plans[k]
            if meta["done"]:
                state = ckpt.restore(step, run.abstract_state, None)
                log.info("resumed from checkpoint %d: phase %s is complete", step, plan.name)
                if "seen" in meta:  # a run killed between this save and the phase's named checkpoint or report
                    _finish_phase(run, plan, state, meta["seen"], only_missing=True)
                return k + 1, state, None, None
            if not plan.start_step < step < plan.end_step:
                raise ConfigError(
                    f"checkpoint {step} is mid-phase {plan.name!r}, but this config puts that phase at steps "
                    f"{plan.start_step}-{plan.end_step}: the plan changed since it was saved"
                )
            data_iter = run.data_iter(plan)
            state = ckpt.restore(step, run.abstract_state, data_iter)
            seen = _Seen.from_meta(plan, meta) if "seen" in meta else _Seen.zeros(plan)
            log.info("resumed from checkpoint %d in phase %s (step %d of %d)", step, plan.name, step, plan.end_step)
            return k, state, data_iter, seen
        except ConfigError:
            raise
        except Exception as e:
            log.warning(
                "checkpoint %d under %s is unreadable (%s: %s); trying the previous one",
                step,
                ckpt.directory,
                type(e).__name__,
                e,
            )
    if existing:
        raise RuntimeError(
            f"none of the checkpoints {existing} in {ckpt.directory} could be read (see the warnings above); "
            "move them away to start afresh"
        )
    return 0, None, None, None


def _rerun_start(run: _Run, plan: PhasePlan) -> TrainState | None:
    """State a re-run of ``plan`` starts from; moves later checkpoints and reports aside."""
    state = None
    if plan.index > 0 and plan.config.start == "previous":
        prev = run.plans[plan.index - 1]
        named = run.named(prev)
        try:
            restored = named.restore_latest(run.abstract_state, None)
        finally:
            named.close()
        if restored is None:
            raise ConfigError(
                f"--phase {plan.name}: it starts from phase {prev.name!r}'s checkpoint {prev.checkpoint_name!r}, which "
                f"is missing under {named.directory}: run that phase first"
            )
        state = restored[1]
    if jax.process_index() == 0:
        _move_aside(run, plan)
    multihost_utils.sync_global_devices("snowjax rerun: moved aside")
    # The manager caches its step list: reopen it.
    run.checkpointer.close()
    run.checkpointer = Checkpointer(run.run_dir / "checkpoints", run.cfg.checkpoint)
    return state


def _move_aside(run: _Run, plan: PhasePlan) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run.run_dir / "superseded" / f"{stamp}-{plan.name}"
    moved = []
    for step in run.checkpointer.all_steps():
        if step > plan.start_step:
            moved.append(run.checkpointer.directory / str(step))
    for later in run.plans[plan.index :]:
        moved += [run.run_dir / "phase_checkpoints" / str(later.checkpoint_name)]
        moved += [run.run_dir / "phases" / f"{later.name}.{ext}" for ext in ("json", "md")]
    for path in moved:
        if path.exists():
            target = dest / path.relative_to(run.run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            log.warning("re-running phase %s: moved %s to %s", plan.name, path, target)


def _phase_start_state(run: _Run, plan: PhasePlan, previous: TrainState | None) -> TrainState:
    """The state phase ``plan`` begins with: fresh, or the previous phase's with the optimizer reset or kept."""
    step = plan.start_step
    if plan.config.start == "checkpoint":
        if plan.config.optimizer_state == "keep":  # the whole state: the optimizers must match
            source = Checkpointer(plan.config.init_from, CheckpointConfig(async_save=False))
            try:
                restored = source.restore_latest(run.abstract_state, None)
            finally:
                source.close()
            if restored is None:
                raise ConfigError(f"init_from: no readable checkpoint under {plan.config.init_from}")
            previous = dataclasses.replace(restored[1], step=jax.device_put(np.int32(step), run.shardings.step))
        else:  # parameters only (any optimizer, scanned or unscanned layers); fresh optimizer state
            from snowjax.interop.hf import load_params

            params = load_params(plan.config.init_from, run.cfg.model, shardings=run.shardings.params)
            opt_state = jax.jit(run.tx.init, out_shardings=run.shardings.opt_state)(params)
            step_arr = jax.device_put(np.int32(step), run.shardings.step)
            log.info("phase %s: parameters from %s, fresh optimizer state", plan.name, plan.config.init_from)
            return TrainState(step=step_arr, params=params, opt_state=opt_state)
        log.info("phase %s: starts from the state under %s", plan.name, plan.config.init_from)
    elif plan.config.start == "scratch" or (plan.index == 0 and previous is None):
        state = init_train_state(run.cfg.model, run.tx, run.shardings, run.cfg.train.seed)
        if step:
            state = dataclasses.replace(state, step=jax.device_put(np.int32(step), run.shardings.step))
        log.info("phase %s: starts from scratch at step %d", plan.name, step)
        return state
    if previous is None:
        raise RuntimeError(f"phase {plan.name}: starts from the previous phase, but there is no state")
    if int(jax.device_get(previous.step)) != step:
        raise RuntimeError(f"phase {plan.name} starts at step {step}, the state is at step {int(previous.step)}")
    if plan.config.optimizer_state == "reset":
        opt_state = jax.jit(run.tx.init, out_shardings=run.shardings.opt_state)(previous.params)
        previous = dataclasses.replace(previous, opt_state=opt_state)
    log.info(
        "phase %s: starts at step %d from the previous phase's parameters, optimizer state %s",
        plan.name,
        step,
        "reset" if plan.config.optimizer_state == "reset" else "kept",
    )
    return previous


def _log_memory_estimate(cfg: Config, plan: PhasePlan, mesh: jax.sharding.Mesh) -> None:
    """Per-device memory of this phase's step (snowjax.train.memory), logged before the step compiles."""
    est = estimate_train_memory(
        cfg.model, dict(mesh.shape), plan.global_batch_size, plan.seq_len, cfg.train.grad_accum_steps
    )
    log.info(
        "phase %s: estimated memory per device (remat %s, %d rows x %d tokens per device):",
        plan.name,
        est.remat,
        est.rows_per_device,
        est.seq_len,
    )
    for line in est.table().splitlines():
        log.info("  %s", line)


def _meta(plan: PhasePlan, done: bool, seen: dict[str, Any]) -> dict[str, Any]:
    return {"phase": plan.index, "phase_name": plan.name, "done": done, "seen": seen}


def _run_phase(
    run: _Run,
    plan: PhasePlan,
    state: TrainState,
    data_iter: grain.DatasetIterator,
    seen: _Seen,
) -> tuple[TrainState, TrainResult]:
    cfg, t = run.cfg, run.cfg.train
    schedule = make_schedule(plan.schedule, plan.steps)
    step_fn = jit_train_step(
        make_train_step(run.graphdef, run.tx, schedule, t.grad_accum_steps), run.shardings, run.mesh
    )
    step = int(jax.device_get(state.step))
    log.info("phase %s: steps %d-%d, %s parameters", plan.name, step, plan.end_step, f"{param_count(state):,}")
    _log_memory_estimate(cfg, plan, run.mesh)
    throughput = Throughput(flops_per_token(cfg.model, plan.seq_len), resolve_peak_flops(t.peak_flops_per_device))
    pending: list[tuple[int, dict[str, jax.Array], int]] = []  # (step, device metrics, batch crc)
    last_loss: float | None = None
    window_start = time.perf_counter()
    stopped = False
    first_step = step + 1
    names = plan.source_names
    logger = run.metrics_logger
    assert logger is not None

    def flush() -> None:
        """Fetch pending metrics, check them, log the window."""
        nonlocal last_loss, window_start
        if not pending:
            return
        fetched = jax.device_get([m for _, m, _ in pending])
        for (s, _, _), m in zip(pending, fetched, strict=True):
            loss = float(m["loss"])
            if not math.isfinite(loss):
                good = run.checkpointer.latest_step()
                raise TrainingDivergedError(
                    f"loss is {loss} at step {s}; stopping. Last good checkpoint: "
                    f"{good if good is not None else 'none'} in {run.checkpointer.directory}"
                )
        elapsed = time.perf_counter() - window_start
        tokens = sum(float(m["tokens"]) for m in fetched)
        last_loss = float(np.mean([float(m["loss"]) for m in fetched]))
        totals = seen.global_totals(pending[-1][0] - plan.start_step)
        record = {
            "phase": plan.name,
            "loss": last_loss,
            "grad_norm": float(fetched[-1]["grad_norm"]),
            "lr": float(fetched[-1]["lr"]),
            "tokens": tokens,
            **throughput(tokens, elapsed),
            **{f"source_tokens/{n}": v for n, v in zip(names, totals["source_tokens"], strict=True)},
            **{f"mix/{n}": float(w) for n, w in zip(names, plan.mixing(pending[-1][0] - plan.start_step), strict=True)},
            "batch_crc": pending[-1][2],
            "progress": f"{pending[-1][0]}/{run.plans[-1].end_step}",
        }
        logger.log(pending[-1][0], record)
        pending.clear()
        window_start = time.perf_counter()

    with _StopSignal() as stop:
        while step < plan.end_step:
            rows, source_tokens, language_tokens = batch_accounting(next(data_iter))
            seen.add(source_tokens, language_tokens, int(np.sum(rows["segment_ids"] == 0)))
            batch = to_global_batch(rows, run.mesh)
            state, metrics = step_fn(state, batch)
            step += 1
            pending.append((step, metrics, batch_fingerprint(rows)))
            if step == first_step:
                flush()  # first step of a phase includes compilation: log it on its own
            stopping = stop.received is not None  # read once: a signal may land at any bytecode
            done = step == plan.end_step
            save_now = step % cfg.checkpoint.every_steps == 0 or done or stopping
            if step % t.log_every == 0 or save_now:
                flush()
            if save_now:
                totals = seen.global_totals(step - plan.start_step)
                run.checkpointer.save(step, state, data_iter, meta=_meta(plan, done, totals))
                if done:
                    _finish_phase(run, plan, state, totals)
            if stopping and not done:
                stopped = True
                log.warning("stopped by signal at step %d; checkpoint saved", step)
                break
        flush()
        run.checkpointer.wait()
    result = TrainResult(
        run.run_dir, run.checkpointer.directory, step, last_loss, stopped, phase=plan.name, reports=dict(_reports(run))
    )
    return state, result


def _finish_phase(
    run: _Run, plan: PhasePlan, state: TrainState, totals: dict[str, Any], only_missing: bool = False
) -> None:
    """Named checkpoint and planned-vs-seen report of a finished phase (``only_missing``: those not yet written)."""
    if plan.checkpoint_name is not None:
        named = run.named(plan)
        try:
            if plan.end_step not in named.all_steps():  # the same on every process
                named.save(plan.end_step, state, None, meta=_meta(plan, True, totals))
                log.info("phase %s: named checkpoint %r at step %d", plan.name, plan.checkpoint_name, plan.end_step)
        finally:
            named.close()
    if only_missing and (run.run_dir / "phases" / f"{plan.name}.json").exists():
        return
    if jax.process_index() == 0:
        write_phase_report(run.run_dir, plan, totals)
        for line in (run.run_dir / "phases" / f"{plan.name}.md").read_text().splitlines():
            log.info("%s", line)


def _reports(run: _Run) -> dict[str, dict[str, Any]]:
    """Phase reports written so far (process 0 writes them; the others return none)."""
    out: dict[str, dict[str, Any]] = {}
    if jax.process_index() != 0:
        return out
    for plan in run.plans:
        path = run.run_dir / "phases" / f"{plan.name}.json"
        if path.is_file():
            out[plan.name] = json.loads(path.read_text())
    return out
