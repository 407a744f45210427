"""``snowjax train``: config -> mesh -> data -> state (fresh or resumed) -> steps -> checkpoints.

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
import signal
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np

from snowjax.config import Config, ConfigError, dump_yaml, validate
from snowjax.data.loader import make_train_iterator
from snowjax.parallel import initialize_distributed, make_mesh, to_global_batch
from snowjax.train.checkpoint import Checkpointer
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
    meta = Path(cfg.data.path) / "snowjax_dataset.json"
    if not meta.exists():
        return
    vocab = json.loads(meta.read_text()).get("vocab_size")
    if vocab and vocab > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size: {cfg.model.vocab_size} is smaller than the dataset's tokenizer vocabulary {vocab} "
            f"({meta})"
        )


def _write_run_files(cfg: Config, run_dir: Path) -> None:
    if jax.process_index() != 0:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))


def train(cfg: Config) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; returns where things are."""
    initialize_distributed()
    validate(cfg, num_devices=jax.device_count())
    if not cfg.data.path:
        raise ConfigError("data.path: no dataset given (build one with `snowjax data text`)")
    _check_vocab(cfg)
    run_dir = Path(cfg.run_dir).absolute()
    _write_run_files(cfg, run_dir)
    mesh = make_mesh(cfg.mesh)
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), mesh.size, jax.devices()[0].device_kind)

    schedule = make_schedule(cfg.schedule, cfg.schedule.total_steps or cfg.train.steps)
    tx = make_optimizer(cfg.optimizer, 1.0)  # LR applied from the global step in the step function
    with jax.set_mesh(mesh):
        graphdef, abstract_state, shardings = abstract_train_state(cfg.model, tx, mesh)
        data_iter = make_train_iterator(
            cfg.data,
            seq_len=cfg.train.seq_len,
            global_batch_size=cfg.train.global_batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint)
        state = _restore_or_init(cfg, checkpointer, abstract_state, shardings, data_iter)
        log.info("model: %s parameters", f"{param_count(state):,}")
        step_fn = jit_train_step(make_train_step(graphdef, tx, schedule, cfg.train.grad_accum_steps), shardings, mesh)
        try:
            return _run_steps(cfg, run_dir, mesh, step_fn, state, data_iter, checkpointer)
        finally:
            checkpointer.close()


def _restore_or_init(
    cfg: Config, checkpointer: Checkpointer, abstract_state: TrainState, shardings: TrainState, data_iter: Any
) -> TrainState:
    existing = checkpointer.all_steps()
    if existing and not cfg.checkpoint.resume:
        raise ConfigError(
            f"checkpoint.resume: false, but {checkpointer.directory} already holds checkpoints {existing}; "
            "use a new run_dir or resume"
        )
    if existing:
        restored = checkpointer.restore_latest(abstract_state, data_iter)
        if restored is None:
            raise RuntimeError(
                f"none of the checkpoints {existing} in {checkpointer.directory} could be read (see the warnings "
                "above); move them away to start afresh"
            )
        step, state = restored
        log.info("resumed from checkpoint %d in %s", step, checkpointer.directory)
        return state
    return init_train_state(cfg.model, make_optimizer(cfg.optimizer, 1.0), shardings, cfg.train.seed)


def _run_steps(
    cfg: Config,
    run_dir: Path,
    mesh: jax.sharding.Mesh,
    step_fn: Any,
    state: TrainState,
    data_iter: Iterator[dict[str, np.ndarray]],
    checkpointer: Checkpointer,
) -> TrainResult:
    t = cfg.train
    step = int(jax.device_get(state.step))
    throughput = Throughput(flops_per_token(cfg.model, t.seq_len), resolve_peak_flops(t.peak_flops_per_device))
    pending: list[tuple[int, dict[str, jax.Array], int]] = []  # (step, device metrics, batch crc)
    last_loss: float | None = None
    window_start = time.perf_counter()
    stopped = False

    def flush() -> None:
        """Fetch pending metrics, check them, log the window."""
        nonlocal last_loss, window_start
        if not pending:
            return
        fetched = jax.device_get([m for _, m, _ in pending])
        for (s, _, _), m in zip(pending, fetched, strict=True):
            loss = float(m["loss"])
            if not math.isfinite(loss):
                good = checkpointer.latest_step()
                raise TrainingDivergedError(
                    f"loss is {loss} at step {s}; stopping. Last good checkpoint: "
                    f"{good if good is not None else 'none'} in {checkpointer.directory}"
                )
        elapsed = time.perf_counter() - window_start
        tokens = sum(float(m["tokens"]) for m in fetched)
        last_loss = float(np.mean([float(m["loss"]) for m in fetched]))
        record = {
            "loss": last_loss,
            "grad_norm": float(fetched[-1]["grad_norm"]),
            "lr": float(fetched[-1]["lr"]),
            "tokens": tokens,
            **throughput(tokens, elapsed),
            "batch_crc": pending[-1][2],
            "progress": f"{pending[-1][0]}/{t.steps}",
        }
        metrics_logger.log(pending[-1][0], record)
        pending.clear()
        window_start = time.perf_counter()

    with (
        MetricsLogger(run_dir, is_primary=jax.process_index() == 0, tensorboard=t.tensorboard) as metrics_logger,
        _StopSignal() as stop,
    ):
        if step >= t.steps:
            log.info("nothing to do: checkpoint is at step %d of %d", step, t.steps)
        while step < t.steps:
            local = next(data_iter)
            batch = to_global_batch(local, mesh)
            state, metrics = step_fn(state, batch)
            step += 1
            pending.append((step, metrics, batch_fingerprint(local)))
            if step == 1:
                flush()  # first step includes compilation: log it on its own
            stopping = stop.received is not None  # read once: a signal may land at any bytecode
            save_now = step % cfg.checkpoint.every_steps == 0 or step == t.steps or stopping
            if step % t.log_every == 0 or save_now:
                flush()
            if save_now:
                checkpointer.save(step, state, data_iter)
            if stopping:
                stopped = True
                log.warning("stopped by signal at step %d; checkpoint saved", step)
                break
        flush()
        checkpointer.wait()
    log.info(
        "done at step %d; checkpoints in %s, metrics in %s", step, checkpointer.directory, run_dir / "metrics.jsonl"
    )
    return TrainResult(run_dir, checkpointer.directory, step, last_loss, stopped)
