"""An async client for any OpenAI-compatible endpoint (vLLM, SGLang, TGI, ``snowjax serve``), with retries.

:class:`TeacherClient` sends one prompt per call, through the chat or the completions API (by
config), and returns a :class:`TeacherReply` whatever happens: transport and protocol failures
become a ``reason``, never an exception, so one bad seed cannot stop a job of millions.

Retried, with exponential backoff and full jitter (``uniform(0, min(backoff_max_s,
backoff_initial_s * 2**attempt))``), at most ``max_retries`` times:

- HTTP 429 and 408, and every 5xx: ``Retry-After`` (seconds or an HTTP date) is honoured when
  the server sends it (up to ``retry_after_max_s``);
- connection errors (refused, reset, a body cut short) and timeouts (``timeout_s`` per attempt);
- a 200 whose body is not the JSON of a completion (``malformed_response``).

Other 4xx (bad request, unauthorised, unknown model, prompt too long) are not retried: the same
request would fail the same way. Those are ``permanent`` (the job records them and does not ask
again); exhausted retries are not (a later run asks again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from snowjax.config import ConfigError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429})


@dataclass
class TeacherConfig:
    """The teacher endpoint and how to talk to it."""

    base_url: str = "http://127.0.0.1:8000/v1"  # up to and including /v1
    api: Literal["chat", "completions"] = "chat"
    model: str = ""  # "": the first model the endpoint lists at /models
    api_key_env: str = ""  # name of the environment variable holding the API key ("" for none)
    concurrency: int = 8  # requests in flight at once
    timeout_s: float = 300.0  # per attempt, from connecting to the last byte of the reply
    max_retries: int = 5  # further attempts after the first, for retryable failures
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 600.0  # longest Retry-After honoured
    max_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed_requests: bool = True  # send a seed derived from the seed id (reproducible where the server supports it)
    extra_body: dict[str, Any] = field(default_factory=dict)  # more request fields (e.g. vLLM's repetition_penalty)


def validate_teacher(cfg: TeacherConfig, key: str = "teacher") -> None:
    if not cfg.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{key}.base_url: expected http(s)://host:port/v1, got {cfg.base_url!r}")
    for k in ("concurrency", "max_tokens"):
        if getattr(cfg, k) < 1:
            raise ConfigError(f"{key}.{k}: must be >= 1, got {getattr(cfg, k)}")
    for k in ("timeout_s", "backoff_initial_s", "backoff_max_s"):
        if getattr(cfg, k) <= 0:
            raise ConfigError(f"{key}.{k}: must be > 0, got {getattr(cfg, k)}")
    if cfg.max_retries < 0:
        raise ConfigError(f"{key}.max_retries: must be >= 0, got {cfg.max_retries}")
    if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
        raise ConfigError(f"{key}.api_key_env: the environment variable {cfg.api_key_env} is not set")


@dataclass
class TeacherReply:
    """The outcome of one prompt: ``text`` and ``finish_reason`` when ok, else a failure ``reason``."""

    ok: bool
    text: str = ""
    finish_reason: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    reason: str = ""  # failure: http_<status>, timeout, connection_error, malformed_response
    error: str = ""
    permanent: bool = False  # a failure that asking again would repeat
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Retryable(Exception):
    def __init__(self, reason: str, error: str, retry_after: float | None = None) -> None:
        super().__init__(error)
        self.reason, self.error, self.retry_after = reason, error, retry_after


class _Permanent(Exception):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason, self.error = reason, error


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def request_seed(seed_id: str) -> int:
    """A 31-bit request seed that depends only on the seed id."""
    return int.from_bytes(hashlib.sha256(seed_id.encode()).digest()[:4], "little") & 0x7FFFFFFF


class TeacherClient:
    """Sends prompts to ``cfg.base_url`` over one ``aiohttp`` session, at most ``cfg.concurrency`` at once.

    Use as ``async with TeacherClient(cfg) as client: reply = await client.ask(prompt, system, seed_id)``.
    """

    def __init__(self, cfg: TeacherConfig, *, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.model = cfg.model
        self._rng = rng or random.Random()
        self._limit = asyncio.Semaphore(cfg.concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> TeacherClient:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.cfg.api_key_env]}"
        connector = aiohttp.TCPConnector(limit=self.cfg.concurrency)
        self._session = aiohttp.ClientSession(headers=headers, connector=connector)
        if not self.model:
            self.model = await self._discover_model()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def url(self) -> str:
        path = "chat/completions" if self.cfg.api == "chat" else "completions"
        return f"{self.cfg.base_url.rstrip('/')}/{path}"

    async def _discover_model(self) -> str:
        """The first model id of ``GET /models`` (with the same retries as completions)."""

        async def once() -> str:
            assert self._session is not None
            timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
            async with self._session.get(f"{self.cfg.base_url.rstrip('/')}/models", timeout=timeout) as resp:
                body = await self._json(resp)
            try:
                return str(body["data"][0]["id"])
            except (KeyError, IndexError, TypeError) as e:
                raise _Retryable("malformed_response", f"/models: no model id in {str(body)[:200]}") from e

        result = await self._with_retries(once)
        if isinstance(result, TeacherReply):
            raise ConnectionError(f"teacher.model: cannot list models at {self.cfg.base_url}: {result.error}")
        log.info("teacher: using model %s at %s", result, self.cfg.base_url)
        return result

    def body(self, prompt: str, system: str, seed_id: str) -> dict[str, Any]:
        """The JSON request for one prompt."""
        cfg = self.cfg
        body: dict[str, Any] = {"model": self.model, "max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
        if cfg.top_p < 1:
            body["top_p"] = cfg.top_p
        if cfg.stop:
            body["stop"] = list(cfg.stop)
        if cfg.seed_requests:
            body["seed"] = request_seed(seed_id)
        if cfg.api == "chat":
            messages = [{"role": "system", "content": system}] if system else []
            body["messages"] = [*messages, {"role": "user", "content": prompt}]
        else:
            body["prompt"] = f"{system}\n\n{prompt}" if system else prompt
        body.update(cfg.extra_body)
        return body

    async def ask(self, prompt: str, system: str = "", seed_id: str = "") -> TeacherReply:
        """One completion of ``prompt``; failures are returned, not raised."""
        body = self.body(prompt, system, seed_id)
        start = time.monotonic()
        async with self._limit:
            result = await self._with_retries(lambda: self._post(body))
        if isinstance(result, TeacherReply):
            result.elapsed_s = time.monotonic() - start
            return result
        text, finish, usage, attempts = result
        return TeacherReply(True, text, finish, usage, attempts, elapsed_s=time.monotonic() - start)

    async def _with_retries(self, call: Any) -> Any:
        """``await call()`` until it succeeds, a permanent error, or retries run out (-> TeacherReply)."""
        cfg = self.cfg
        for attempt in range(cfg.max_retries + 1):
            try:
                result = await call()
                return (*result, attempt + 1) if isinstance(result, tuple) else result
            except _Permanent as e:
                return TeacherReply(False, attempts=attempt + 1, reason=e.reason, error=e.error, permanent=True)
            except _Retryable as e:
                failure = e
            if attempt == cfg.max_retries:
                break
            delay = self._rng.uniform(0, min(cfg.backoff_max_s, cfg.backoff_initial_s * 2**attempt))
            if failure.retry_after is not None:
                delay = min(max(delay, failure.retry_after), cfg.retry_after_max_s)
            log.debug("teacher: %s (%s); retry %d in %.2fs", failure.reason, failure.error, attempt + 1, delay)
            await asyncio.sleep(delay)
        return TeacherReply(False, attempts=cfg.max_retries + 1, reason=failure.reason, error=failure.error)

    async def _json(self, resp: aiohttp.ClientResponse) -> Any:
        """The JSON body of a 2xx response; errors classified as retryable or permanent."""
        if resp.status >= 400:
            text = (await resp.text(errors="replace"))[:500]
            reason = f"http_{resp.status}"
            if resp.status in RETRYABLE_STATUS or resp.status >= 500:
                raise _Retryable(reason, text, parse_retry_after(resp.headers.get("Retry-After")))
            raise _Permanent(reason, text)
        raw = await resp.read()
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise _Retryable("malformed_response", f"not JSON ({e}): {raw[:200]!r}") from e

    async def _post(self, body: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        try:
            async with self._session.post(self.url, json=body, timeout=timeout) as resp:
                data = await self._json(resp)
        except TimeoutError as e:
            raise _Retryable("timeout", f"no complete reply within {self.cfg.timeout_s}s") from e
        except aiohttp.ClientError as e:  # refused, reset, payload cut short, ...
            raise _Retryable("connection_error", f"{type(e).__name__}: {e}") from e
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.cfg.api == "chat" else choice["text"]
            if not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
            finish = str(choice.get("finish_reason") or "")
            usage = data.get("usage") or {}
        except (KeyError, IndexError, TypeError) as e:
            raise _Retryable("malformed_response", f"no completion in the reply ({e}): {str(data)[:200]}") from e
        return text, finish, {k: v for k, v in usage.items() if isinstance(v, int)}
