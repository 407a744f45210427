"""`snowjax data synth` against a faulty teacher: retries what is retryable, counts failures, resumes cleanly."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from snowjax.data.shards import read_dataset_summary
from snowjax.data.tokenizer import train_bpe_tokenizer
from snowjax.synth.client import TeacherConfig, parse_retry_after
from snowjax.synth.job import SynthConfig, run_synth
from snowjax.synth.prompts import PromptConfig, PromptStyle
from snowjax.synth.seeds import SeedsConfig
from snowjax.synth.store import ReplyStore
from snowjax.synth.validate import ValidationConfig

# seed id -> what the teacher does with it (until healed)
CASES = {
    "ok": "answers",
    "e500": "500 twice, then answers",
    "e429": "429 with Retry-After 0.2 s once, then answers",
    "cut": "a body cut short once, then answers",
    "hang": "never answers within the client timeout",
    "badjson": "200 with a body that is not JSON",
    "len": "a reply cut by max_tokens (finish_reason length)",
    "bad400": "400: a request it will never accept",
}


def document(case: str) -> str:
    n = sorted(CASES).index(case) + 2
    return f'def scale_{case}(x: float) -> float:\n    """Return x times {n}."""\n    return x * {n}\n'


class FaultyTeacher:
    """An OpenAI-style chat endpoint on loopback that misbehaves per seed (CASES) until ``healed``."""

    def __init__(self) -> None:
        self.hits: collections.Counter = collections.Counter()
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.healed = False
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        case = re.search(r"CASE:(\w+)", body["messages"][-1]["content"]).group(1)  # type: ignore[union-attr]
        self.hits[case] += 1
        self.times[case].append(time.monotonic())
        n, fail = self.hits[case], not self.healed
        if fail and case == "hang":
            await asyncio.sleep(1.0)
        if fail and case == "badjson":
            return web.Response(text='{"choices": [{"message": ', content_type="application/json")
        if fail and case == "bad400":
            return web.json_response({"error": {"message": "nope"}}, status=400)
        if fail and case == "e500" and n <= 2:
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        if fail and case == "e429" and n == 1:
            return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "0.2"})
        if fail and case == "cut" and n == 1:
            resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "4096"})
            await resp.prepare(request)
            await resp.write(b'{"choices": [{"message": {"content": "')
            assert request.transport is not None
            request.transport.close()
            return resp
        text, finish = f"```python\n{document(case)}```\n", "stop"
        if fail and case == "len":
            text, finish = f"```python\n{document(case)}", "length"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        return web.json_response({"choices": [choice], "usage": {"prompt_tokens": 9, "completion_tokens": 20}})

    def __enter__(self) -> FaultyTeacher:
        self._thread.start()

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self.chat)
            self._runner = web.AppRunner(app, shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe_tokenizer([document(c) for c in CASES] * 5, 300).save(str(path))
    return path


def synth_config(tmp_path: Path, tokenizer: Path, url: str, **teacher: Any) -> SynthConfig:
    seeds = tmp_path / "seeds.jsonl"
    with seeds.open("w") as f:
        for case in CASES:
            content = f"# CASE:{case}\nimport math\n\n\ndef area(r):\n    return math.pi * r * r\n"
            f.write(json.dumps({"id": case, "language": "python", "content": content}) + "\n")
    return SynthConfig(
        out_dir=str(tmp_path / "out"),
        seeds=SeedsConfig(path=str(seeds)),
        prompts=PromptConfig(styles=[PromptStyle("rewrite", "Improve this {language_name} {seed_kind}:\n{seed}")]),
        teacher=TeacherConfig(
            base_url=url,
            model="teacher",
            concurrency=4,
            timeout_s=0.3,
            max_retries=2,
            backoff_initial_s=0.01,
            backoff_max_s=0.05,
            **teacher,
        ),
        validation=ValidationConfig(min_chars=20),
        tokenizer=str(tokenizer),
    )


def test_faulty_teacher_job_finishes_counts_failures_and_resumes(tmp_path: Path, tokenizer: Path) -> None:
    with FaultyTeacher() as teacher:
        cfg = synth_config(tmp_path, tokenizer, teacher.url)
        first = run_synth(cfg)
        # Retryable failures were retried until they worked; the rest are counted by reason.
        assert first["asked"] == len(CASES)
        assert first["failed"] == {"timeout": 1, "malformed_response": 1}
        assert first["refused"] == {"http_400": 1}
        assert dict(teacher.hits) == {
            "ok": 1, "e500": 3, "e429": 2, "cut": 2, "hang": 3, "badjson": 3, "len": 1, "bad400": 1,
        }  # fmt: skip
        assert teacher.times["e429"][1] - teacher.times["e429"][0] >= 0.2  # Retry-After honoured
        assert first["accepted"] == 4 and first["validation"]["rejected"]["truncated"] == 1
        assert first["missing"] == 2
        summary = read_dataset_summary(cfg.out_dir)
        assert summary["splits"]["train"]["num_examples"] == 4
        assert summary["metadata"]["per_language"]["python"]["documents"] == 4

        # The job died while writing a line: the next run drops that tail, counts it, and asks
        # only the seeds without a record (the two transient failures), once each.
        replies = Path(cfg.out_dir) / "replies.jsonl"
        with replies.open("a") as f:
            f.write('{"id": "hang", "status": "ok", "te')
        teacher.healed = True
        before = teacher.hits.copy()
        second = run_synth(cfg)
        assert second["asked"] == 2 and second["store"]["truncated_tail"] == 1
        assert teacher.hits - before == collections.Counter({"hang": 1, "badjson": 1})
        assert second["accepted"] == 6 and second["failed"] == {} and second["missing"] == 0
        ids = [json.loads(line)["id"] for line in replies.read_text().splitlines()]
        assert sorted(ids) == sorted(CASES)  # one record per seed, none twice

        third = run_synth(cfg)
        assert third["asked"] == 0 and teacher.hits - before == collections.Counter({"hang": 1, "badjson": 1})
        assert third["accepted"] == 6
        assert "| truncated | 1 |" in (Path(cfg.out_dir) / "report.md").read_text()


def test_reply_store_never_writes_an_id_twice(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with ReplyStore(path) as store:
        store.append({"id": "a", "status": "ok"})
        with pytest.raises(ValueError, match="already has a record"):
            store.append({"id": "a", "status": "ok"})
    path.write_text(path.read_text() + "not json\n" + json.dumps({"id": "a", "status": "failed"}) + "\n")
    again = ReplyStore(path)
    assert again.bad_lines == 1 and again.duplicate_lines == 1 and again.records["a"]["status"] == "ok"
    again.close()


def test_retry_after_takes_seconds_or_a_date() -> None:
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
