"""The OpenAI request and response shapes that ``snowjax serve`` speaks, checked field by field.

Requests are parsed into :class:`CompletionRequest` (one or more prompts that share sampling
settings). Anything malformed raises :class:`RequestError`, which the server turns into an
OpenAI-style JSON error with a 4xx status::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

Supported fields: ``model``, ``prompt`` (a string or a list of strings) or ``messages``,
``max_tokens`` (``max_completion_tokens`` for chat), ``temperature``, ``top_p``, ``stop``,
``n``, ``seed``. Fields that would change the answer but are not implemented (``stream``,
``logprobs``, ``echo``, ``suffix``, ``logit_bias``, penalties other than 0, ``best_of`` other than
``n``, tools) are refused rather than ignored; purely informational ones (``user``, ...) are ignored.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

MAX_STOP_SEQUENCES = 4  # as the OpenAI API

# Fields that change what the reply would be: refused unless they hold the neutral value.
_NEUTRAL = {
    "stream": (False, None),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (False, None),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}


class RequestError(Exception):
    """A bad request: HTTP ``status`` (4xx), a message for the user, and the field at fault."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400, kind: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.kind = kind or ("not_found_error" if status == 404 else "invalid_request_error")

    def to_json(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclasses.dataclass
class CompletionRequest:
    """What to generate: every prompt (text) gets ``n`` completions with the same settings.

    ``max_tokens`` None means "as many as fit, up to the server's default".
    """

    prompts: list[str]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None


def _number(body: Mapping[str, Any], key: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{key} must be a number, got {type(value).__name__}", param=key)
    if value < lo or value > hi or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise RequestError(f"{key} must be in {bracket}{lo}, {hi}], got {value}", param=key)
    return float(value)


def _integer(body: Mapping[str, Any], key: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{key} must be an integer, got {type(value).__name__}", param=key)
    if value < lo or (hi is not None and value > hi):
        limit = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise RequestError(f"{key} must be {limit}, got {value}", param=key)
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError("stop must be a string or a list of strings", param="stop")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise RequestError(f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stop)}", param="stop")
    if any(not s for s in stop):
        raise RequestError("stop sequences must not be empty", param="stop")
    return tuple(dict.fromkeys(stop))


def _check_unsupported(body: Mapping[str, Any]) -> None:
    for key, neutral in _NEUTRAL.items():
        if key in body and body[key] not in neutral:
            hint = " (streaming is not implemented: ask without stream)" if key == "stream" else ""
            raise RequestError(f"{key}={body[key]!r} is not supported by snowjax serve{hint}", param=key)


def _common(body: Any, max_n: int, max_tokens_key: str = "max_tokens") -> dict[str, Any]:
    """The sampling fields shared by both endpoints, validated."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    _check_unsupported(body)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model must be a string", param="model")
    n = _integer(body, "n", 1, max_n) or 1
    best_of = _integer(body, "best_of", 1)
    if best_of is not None and best_of != n:
        raise RequestError("best_of other than n is not supported", param="best_of")
    max_tokens = _integer(body, max_tokens_key, 1)
    if max_tokens is None and max_tokens_key != "max_tokens":
        max_tokens = _integer(body, "max_tokens", 1)  # chat clients still send the older name
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("seed must be an integer", param="seed")
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "stop": _stop(body),
        "n": n,
        "seed": seed,
    }


def parse_completion(body: Any, max_n: int) -> CompletionRequest:
    """A ``/v1/completions`` body -> :class:`CompletionRequest` (raises :class:`RequestError`)."""
    common = _common(body, max_n)
    if "prompt" not in body:
        raise RequestError("prompt is required", param="prompt")
    prompt = body["prompt"]
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompt must be a string or a non-empty list of strings", param="prompt")
    return CompletionRequest(prompts=prompts, **common)


def parse_messages(body: Any) -> list[dict[str, str]]:
    """The ``messages`` of a chat body as ``[{"role", "content"}]`` with text content."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise RequestError(f"{where}.role must be system, developer, user or assistant", param=where)
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(
                isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str) for c in content
            ):
                raise RequestError(f"{where}.content: only text parts are supported", param=where)
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str):
            raise RequestError(f"{where}.content must be a string", param=where)
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    return out


def parse_chat(body: Any, max_n: int) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """A ``/v1/chat/completions`` body -> (messages, common sampling fields)."""
    common = _common(body, max_n, max_tokens_key="max_completion_tokens")
    return parse_messages(body), common


# ------------------------------------------------------------------------------------- responses


def finish_reason(reason: str) -> str:
    """Generator reasons -> OpenAI's: EOS and stop sequences are both ``stop``."""
    return "length" if reason == "length" else "stop"


def completion_response(
    model: str, texts: Sequence[str], reasons: Sequence[str], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A ``text_completion`` object; ``texts[i]`` is choice ``i`` (prompt-major, n per prompt)."""
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": t, "finish_reason": finish_reason(r), "logprobs": None}
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ],
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def chat_response(
    model: str, texts: Sequence[str], reasons: Sequence[str], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """A ``chat.completion`` object with one assistant message per choice."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": finish_reason(r)}
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ],
        "usage": _usage(prompt_tokens, completion_tokens),
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
