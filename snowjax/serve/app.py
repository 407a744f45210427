"""``snowjax serve``: an OpenAI-compatible HTTP server (aiohttp) over a snowjax checkpoint or a Hugging Face export.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models`` and
``GET /health`` (readiness, with the batching counters). Requests are batched by
:class:`~snowjax.serve.batching.BatchingEngine`; request fields are checked in
:mod:`snowjax.serve.protocol` (bad ones get a 4xx JSON error naming the field).

Prompt limits: a prompt of ``p`` tokens is padded to ``ceil(p / pad_multiple) * pad_multiple``
(fewer compiled shapes); that plus ``max_tokens`` must fit in the model's ``max_seq_len``. A
request without ``max_tokens`` gets what fits, up to ``default_max_tokens``. A request that
cannot fit is refused with 400 (``context_length_exceeded`` in the message).

Use :class:`ServerThread` to run a server inside a Python process (tests, benchmarks); the
command line runs :func:`serve` until interrupted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from snowjax.config import ConfigError
from snowjax.serve.batching import BatchingEngine
from snowjax.serve.chat import CHAT_STOP, load_chat_template, render_default
from snowjax.serve.protocol import (
    CompletionRequest,
    RequestError,
    chat_response,
    completion_response,
    parse_chat,
    parse_completion,
)

log = logging.getLogger(__name__)

_ENGINE = web.AppKey("engine", BatchingEngine)
_STATE = web.AppKey("state", dict)
MAX_BODY_BYTES = 16 * 2**20


@dataclass
class ServeConfig:
    """What ``snowjax serve`` loads and how it batches. Every field is a ``--flag`` of the command."""

    checkpoint: str = ""  # run dir, checkpoint dir, step dir, named phase checkpoint, or a Hugging Face dir
    config: str = ""  # YAML with the model when none is found beside the checkpoint
    tokenizer: str = ""  # tokenizer.json (default: beside the checkpoint or its datasets)
    model_name: str = ""  # the id in /v1/models and replies (default: the checkpoint's name)
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (ServerThread reports it)
    max_batch: int = 32  # most rows (prompts x n) per generate call
    batch_wait_ms: float = 10.0  # a batch starts once no request has arrived for this long...
    max_batch_wait_ms: float = 50.0  # ...or once its oldest request has waited this long
    pad_multiple: int = 32  # prompts and caches are padded to multiples of this (fewer compilations)
    default_max_tokens: int = 256  # for requests without max_tokens (capped by what fits)
    dtype: str = ""  # compute dtype override (float32, bfloat16); "": the checkpoint's. CPUs want float32.


def validate_serve(cfg: ServeConfig) -> None:
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: give a checkpoint or Hugging Face directory to serve")
    for key in ("max_batch", "pad_multiple", "default_max_tokens"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {getattr(cfg, key)}")
    if cfg.batch_wait_ms < 0:
        raise ConfigError(f"batch_wait_ms: must be >= 0, got {cfg.batch_wait_ms}")
    if cfg.max_batch_wait_ms < cfg.batch_wait_ms:
        raise ConfigError(
            f"max_batch_wait_ms: must be >= batch_wait_ms ({cfg.batch_wait_ms}), got {cfg.max_batch_wait_ms}"
        )
    if cfg.dtype not in ("", "float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype: one of float32, bfloat16, float16 (or empty), got {cfg.dtype!r}")
    if not 0 <= cfg.port < 65536:
        raise ConfigError(f"port: {cfg.port} is not a TCP port")


@dataclass
class LoadedModel:
    """What a server needs: the engine's generator inputs, the tokenizer and the chat renderer."""

    name: str
    model_cfg: Any
    params: Any
    tokenizer: Any
    render_chat: Callable[[Sequence[dict[str, str]]], str]
    chat_stop: tuple[str, ...]


def load_for_serving(cfg: ServeConfig) -> LoadedModel:
    """Load the checkpoint (as ``snowjax eval`` does) onto the default device, with its tokenizer."""
    import jax

    from snowjax.data.tokenizer import load_tokenizer
    from snowjax.eval.run import EvalConfig, load_model

    validate_serve(cfg)
    model_cfg, params, tok_file, label = load_model(
        EvalConfig(checkpoint=cfg.checkpoint, config=cfg.config, tokenizer=cfg.tokenizer)
    )
    if tok_file is None:
        raise ConfigError("tokenizer: none found beside the checkpoint or its datasets; pass --tokenizer")
    if cfg.dtype:
        model_cfg = dataclasses.replace(model_cfg, dtype=cfg.dtype)
    params = jax.device_put(params, jax.devices()[0])  # checkpoints load onto the host CPU
    template = load_chat_template(Path(tok_file))
    name = cfg.model_name or Path(cfg.checkpoint).absolute().name or label
    return LoadedModel(
        name=name,
        model_cfg=model_cfg,
        params=params,
        tokenizer=load_tokenizer(tok_file),
        render_chat=template or render_default,
        chat_stop=() if template else CHAT_STOP,
    )


def build_app(loaded: LoadedModel, cfg: ServeConfig) -> web.Application:
    """The aiohttp application; its engine starts and stops with the app."""
    from snowjax.data.tokenizer import decode
    from snowjax.generate import Generator

    tok = loaded.tokenizer
    generator = Generator(loaded.model_cfg, loaded.params, pad_multiple=cfg.pad_multiple)
    engine = BatchingEngine(
        generator,
        lambda ids: decode(tok, ids),
        max_batch=cfg.max_batch,
        batch_wait_s=cfg.batch_wait_ms / 1000,
        max_batch_wait_s=cfg.max_batch_wait_ms / 1000,
    )
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors_as_json])
    app[_ENGINE] = engine
    app[_STATE] = {"loaded": loaded, "cfg": cfg, "started": time.time()}

    async def on_startup(app: web.Application) -> None:
        await engine.start()

    async def on_cleanup(app: web.Application) -> None:
        await engine.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    return app


@web.middleware
async def _errors_as_json(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Every error leaves as an OpenAI-style JSON body, never an HTML page or a traceback."""
    try:
        return await handler(request)
    except RequestError as e:
        return web.json_response(e.to_json(), status=e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        err = RequestError(e.reason or "error", status=e.status, kind="invalid_request_error")
        return web.json_response(err.to_json(), status=e.status)
    except Exception:
        log.exception("internal error on %s", request.path)
        err = RequestError("internal server error", status=500, kind="server_error")
        return web.json_response(err.to_json(), status=500)


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from e


def _check_model(request: web.Request, model: str | None) -> str:
    name = request.app[_STATE]["loaded"].name
    if model is not None and model != name:
        raise RequestError(f"model {model!r} does not exist; this server has {name!r}", param="model", status=404)
    return name


async def _run(request: web.Request, req: CompletionRequest) -> tuple[list[str], list[str], int, int]:
    """Tokenize, check lengths, generate; returns (texts, reasons, prompt tokens, completion tokens)."""
    engine, state = request.app[_ENGINE], request.app[_STATE]
    tok, cfg = state["loaded"].tokenizer, state["cfg"]
    ids = [tok.encode(p, add_special_tokens=False).ids for p in req.prompts]
    for i, row in enumerate(ids):
        if not row:
            raise RequestError(f"prompt {i} is empty (0 tokens)", param="prompt")
        room = engine.room(len(row))
        want = req.max_tokens if req.max_tokens is not None else 1
        if room < want:
            raise RequestError(
                f"context_length_exceeded: prompt {i} has {len(row)} tokens (padded to "
                f"{engine.padded_prompt_len(len(row))}); with max_tokens {want} that is over the model's "
                f"max_seq_len {engine.max_seq_len}",
                param="prompt" if room < 1 else "max_tokens",
            )
    longest = max(map(len, ids))
    max_tokens = req.max_tokens or min(cfg.default_max_tokens, engine.room(longest))
    rows = [row for row in ids for _ in range(req.n)]
    gens = await engine.generate(
        rows, max_tokens, temperature=req.temperature, top_p=req.top_p, stop=req.stop, seed=req.seed
    )
    texts = [g.text or "" for g in gens]
    reasons = [g.finish_reason for g in gens]
    return texts, reasons, sum(map(len, ids)), sum(len(g.tokens) for g in gens)


async def _completions(request: web.Request) -> web.Response:
    req = parse_completion(await _body(request), max_n=request.app[_ENGINE].max_batch)
    name = _check_model(request, req.model)
    texts, reasons, p, c = await _run(request, req)
    return web.json_response(completion_response(name, texts, reasons, p, c))


async def _chat_completions(request: web.Request) -> web.Response:
    messages, common = parse_chat(await _body(request), max_n=request.app[_ENGINE].max_batch)
    name = _check_model(request, common["model"])
    loaded = request.app[_STATE]["loaded"]
    prompt = loaded.render_chat(messages)
    common["stop"] = tuple(dict.fromkeys((*common["stop"], *loaded.chat_stop)))
    texts, reasons, p, c = await _run(request, CompletionRequest(prompts=[prompt], **common))
    return web.json_response(chat_response(name, texts, reasons, p, c))


async def _models(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    model = {
        "id": state["loaded"].name,
        "object": "model",
        "created": int(state["started"]),
        "owned_by": "snowjax",
        "max_model_len": state["loaded"].model_cfg.max_seq_len,
    }
    return web.json_response({"object": "list", "data": [model]})


async def _health(request: web.Request) -> web.Response:
    return web.json_response(
        {"status": "ok", "model": request.app[_STATE]["loaded"].name, "batching": request.app[_ENGINE].stats.to_json()}
    )


def serve(cfg: ServeConfig) -> None:
    """Load the model and serve until interrupted (Ctrl-C)."""
    loaded = load_for_serving(cfg)
    app = build_app(loaded, cfg)
    log.info(
        "serving %s at http://%s:%d/v1 (max batch %d, batch wait %g ms)",
        loaded.name,
        cfg.host,
        cfg.port,
        cfg.max_batch,
        cfg.batch_wait_ms,
    )
    web.run_app(app, host=cfg.host, port=cfg.port, print=None, access_log=None)


class ServerThread:
    """A server on a background thread with its own event loop: ``with ServerThread(cfg) as url: ...``.

    ``url`` is ``http://host:port`` (the real port when ``cfg.port`` is 0). The model is loaded
    in the calling thread, so loading errors raise from ``__enter__``. ``loaded`` may be given
    to serve parameters already in memory.
    """

    def __init__(self, cfg: ServeConfig, loaded: LoadedModel | None = None) -> None:
        self.cfg = dataclasses.replace(cfg)
        self.loaded = loaded or load_for_serving(cfg)
        self.url = ""
        self.app: web.Application | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="snowjax-serve", daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=60)
        return self.url

    async def _start(self) -> None:
        self.app = build_app(self.loaded, self.cfg)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{self.cfg.host}:{port}"

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=60)
        self._loop.close()

    @property
    def engine(self) -> BatchingEngine:
        assert self.app is not None
        return self.app[_ENGINE]
