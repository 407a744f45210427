"""Request batching for ``snowjax serve``: one worker turns waiting requests into batched ``Generator`` calls.

Handlers call :meth:`BatchingEngine.generate` (token-id prompts + sampling settings) and await
the result. A single worker coroutine takes the oldest waiting request and waits for others to join it
while they keep coming: until ``batch_wait_s`` pass with no new arrival, ``max_batch_wait_s``
pass since the oldest arrived, or ``max_batch`` rows wait (clients that all resend as soon as a
batch answers arrive spread over tens of milliseconds; a fixed window would start a small batch
and leave the rest a whole generation behind). Then it runs one
:meth:`Generator.generate <snowjax.generate.Generator.generate>` in a worker thread, so the event
loop keeps accepting requests (and the next batch fills) while the model runs.

Which requests share a batch (the Generator takes one :class:`SamplingConfig` per call):

- the same temperature, top_p (ignored, and so normalised, when greedy) and stop sequences;
- the longest prompt (rounded up to ``pad_multiple``) plus the largest ``max_tokens`` fits in
  ``max_seq_len``; the batch decodes to that largest ``max_tokens`` and each row is cut back to
  its own request's (so a row gets exactly what a direct call with its ``max_tokens`` returns);
- a sampled request with a ``seed`` runs alone, so the same request and seed give the same
  text whatever else is waiting (in a shared batch a row's random draws depend on its neighbours).

Batches are padded with copies of their first row to a power of two (capped at ``max_batch``)
so only a few batch shapes are ever compiled; the copies' outputs are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from snowjax.generate import Generation, Generator, SamplingConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchKey:
    """Requests with equal keys can share one generate call."""

    temperature: float
    top_p: float
    stop: tuple[str, ...]
    solo: int = 0  # non-zero: a seeded sampled request that must run alone


@dataclasses.dataclass
class _Job:
    rows: list[list[int]]
    max_tokens: int
    key: BatchKey
    seed: int | None
    future: asyncio.Future
    enqueued: float


@dataclasses.dataclass
class EngineStats:
    """Counters of what the worker ran (rows are prompts x n; padded rows are shape filler)."""

    requests: int = 0
    batches: int = 0
    rows: int = 0
    padded_rows: int = 0
    generated_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def batch_bucket(rows: int, max_batch: int) -> int:
    """The compiled batch size that holds ``rows``: the next power of two, capped at ``max_batch``."""
    return min(max_batch, 1 << max(0, math.ceil(math.log2(max(rows, 1)))))


class BatchingEngine:
    """Collects generation requests and runs them as batches on one worker.

    Args:
      generator: the model's :class:`Generator`.
      decode_text: token ids -> text (the tokenizer's decode).
      max_batch: most rows (prompts x n) in one generate call.
      batch_wait_s: a batch starts once no request has arrived for this long...
      max_batch_wait_s: ...or once its oldest request has waited this long (at least batch_wait_s).
    """

    def __init__(
        self,
        generator: Generator,
        decode_text: Callable[[list[int]], str],
        *,
        max_batch: int = 32,
        batch_wait_s: float = 0.005,
        max_batch_wait_s: float = 0.05,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.generator = generator
        self.decode_text = decode_text
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.max_batch_wait_s = max(max_batch_wait_s, batch_wait_s)
        self._last_arrival = 0.0
        self.max_seq_len = generator.cfg.max_seq_len
        self.pad_multiple = generator.pad_multiple
        self.stats = EngineStats()
        self._pending: collections.deque[_Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snowjax-generate")
        self._solo_ids = iter(range(1, 1 << 62))
        self._rng = random.Random()

    # --------------------------------------------------------------------------- limits

    def padded_prompt_len(self, prompt_len: int) -> int:
        """The prompt length the Generator pads a prompt of ``prompt_len`` tokens to."""
        return max(self.pad_multiple, math.ceil(prompt_len / self.pad_multiple) * self.pad_multiple)

    def room(self, prompt_len: int) -> int:
        """Most new tokens a prompt of ``prompt_len`` tokens can get (<= 0: the prompt is too long)."""
        return self.max_seq_len - self.padded_prompt_len(prompt_len)

    # --------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._worker = asyncio.create_task(self._work(), name="snowjax-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for job in self._pending:
            if not job.future.done():
                job.future.cancel()
        self._executor.shutdown(wait=True)

    # --------------------------------------------------------------------------- requests

    async def generate(
        self,
        rows: Sequence[Sequence[int]],
        max_tokens: int,
        *,
        temperature: float,
        top_p: float,
        stop: tuple[str, ...] = (),
        seed: int | None = None,
    ) -> list[Generation]:
        """Completions of ``rows`` (token-id prompts), in order; each has ``text`` and ``finish_reason``.

        The caller has checked every row against :meth:`room`. More rows than ``max_batch``
        are split over several batches.
        """
        if self._wake is None:
            raise RuntimeError("BatchingEngine.start() was not awaited")
        greedy = temperature <= 0
        solo = next(self._solo_ids) if (seed is not None and not greedy) else 0
        key = BatchKey(0.0 if greedy else temperature, 1.0 if greedy else top_p, tuple(stop), solo)
        loop = asyncio.get_running_loop()
        jobs = []
        for i in range(0, len(rows), self.max_batch):
            chunk = [list(r) for r in rows[i : i + self.max_batch]]
            chunk_seed = None if seed is None else seed + i // self.max_batch
            jobs.append(_Job(chunk, max_tokens, key, chunk_seed, loop.create_future(), loop.time()))
        self._pending.extend(jobs)
        self._last_arrival = loop.time()
        self.stats.requests += 1
        self._wake.set()
        results = await asyncio.gather(*(j.future for j in jobs))
        return [g for chunk in results for g in chunk]

    # --------------------------------------------------------------------------- worker

    def _rows_waiting(self, key: BatchKey) -> int:
        return sum(len(j.rows) for j in self._pending if j.key == key and not j.future.done())

    def _take_batch(self) -> list[_Job]:
        """The oldest live job and the compatible jobs behind it that fit in one batch (FIFO)."""
        while self._pending and self._pending[0].future.done():  # cancelled: the client went away
            self._pending.popleft()
        if not self._pending:
            return []
        head = self._pending.popleft()
        batch, rows = [head], len(head.rows)
        longest, max_new = max(map(len, head.rows)), head.max_tokens
        keep: collections.deque[_Job] = collections.deque()
        for job in self._pending:
            if job.future.done():
                continue
            job_longest = max(longest, *map(len, job.rows))
            job_new = max(max_new, job.max_tokens)
            fits = rows + len(job.rows) <= self.max_batch and self.room(job_longest) >= job_new
            if job.key == head.key and head.key.solo == 0 and fits:
                batch.append(job)
                rows, longest, max_new = rows + len(job.rows), job_longest, job_new
            else:
                keep.append(job)
        self._pending = keep
        return batch

    async def _work(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            head = self._pending[0]
            # Wait for company only while the batch is not full and requests keep arriving; a
            # request that waited through a running batch is past max_batch_wait_s and goes at once.
            while self._rows_waiting(head.key) < self.max_batch and head.key.solo == 0:
                quiet = max(head.enqueued, self._last_arrival) + self.batch_wait_s
                remaining = min(quiet, head.enqueued + self.max_batch_wait_s) - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as e:  # a failed batch fails its requests, not the server
                log.exception("generation failed for a batch of %d requests", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    def _run(self, batch: list[_Job]) -> list[list[Generation]]:
        """One generate call for ``batch`` (in the worker thread); each job's rows, cut to its max_tokens."""
        rows = [r for job in batch for r in job.rows]
        size = batch_bucket(len(rows), self.max_batch)
        padded = rows + [rows[0]] * (size - len(rows))
        key = batch[0].key
        seed = batch[0].seed if key.solo else self._rng.randrange(1 << 31)
        sampling = SamplingConfig(
            max_new_tokens=max(job.max_tokens for job in batch),
            temperature=key.temperature,
            top_p=key.top_p,
            stop_sequences=key.stop,
            seed=seed or 0,
        )
        gens = self.generator.generate(padded, sampling, self.decode_text)
        out, i = [], 0
        for job in batch:
            out.append([self._cut(g, job.max_tokens) for g in gens[i : i + len(job.rows)]])
            i += len(job.rows)
        self.stats.batches += 1
        self.stats.rows += len(rows)
        self.stats.padded_rows += size - len(rows)
        self.stats.generated_tokens += sum(len(g.tokens) for chunk in out for g in chunk)
        log.debug(
            "batch: %d requests, %d rows (padded to %d), %d new tokens",
            len(batch),
            len(rows),
            size,
            sampling.max_new_tokens,
        )
        return out

    def _cut(self, g: Generation, max_tokens: int) -> Generation:
        """``g`` as a call with ``max_new_tokens=max_tokens`` returns it.

        Such a call stops after ``max_tokens`` tokens with reason "length", also when the row
        would have ended (EOS, stop sequence) right after them.
        """
        if len(g.tokens) < max_tokens:
            return g
        tokens = g.tokens[:max_tokens]
        return Generation(tokens=tokens, finish_reason="length", text=self.decode_text(tokens))
