"""Chat messages -> one prompt string for a base model.

snowjax models are base (pretrained) models with no chat tokens, so ``/v1/chat/completions``
renders the conversation with a plain, documented template and lets the model continue after
the assistant header (:data:`DEFAULT_TEMPLATE_DOC`)::

    ### System
    You write Python.

    ### User
    Write a function that adds two numbers.

    ### Assistant

Chat requests also stop at the next turn header (:data:`CHAT_STOP`), so the model does not
write the user's next message. A Hugging Face directory whose ``tokenizer_config.json`` has a
``chat_template`` (an instruct model) is rendered with that Jinja template instead, in Jinja's
sandbox, with ``add_generation_prompt=True``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_HEADERS = {"system": "### System", "user": "### User", "assistant": "### Assistant"}
CHAT_STOP: tuple[str, ...] = ("\n### User", "\n### System")
DEFAULT_TEMPLATE_DOC = "'### {Role}\\n{content}\\n\\n' per message, then '### Assistant\\n'"


def render_default(messages: Sequence[dict[str, str]]) -> str:
    """The built-in template: a ``### Role`` header line, the content, a blank line; then the assistant header."""
    parts = [f"{_HEADERS[m['role']]}\n{m['content']}\n\n" for m in messages]
    return "".join(parts) + _HEADERS["assistant"] + "\n"


def load_chat_template(tokenizer_file: Path | None) -> Callable[[Sequence[dict[str, str]]], str] | None:
    """The ``chat_template`` of the ``tokenizer_config.json`` beside ``tokenizer_file`` as a renderer, if any.

    Returns None when there is none (the caller uses :func:`render_default`). A template that
    does not compile is logged and ignored rather than failing the server at start-up.
    """
    if tokenizer_file is None:
        return None
    path = Path(tokenizer_file).parent / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable (%s); using the built-in chat template", path, e)
        return None
    source = cfg.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    if not isinstance(source, str) or not source:
        return None
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        log.warning("%s has a chat_template but jinja2 is not installed; using the built-in template", path)
        return None

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        template = env.from_string(source)
    except TemplateError as e:
        log.warning("%s: chat_template does not compile (%s); using the built-in template", path, e)
        return None
    specials = {k: cfg.get(k) for k in ("bos_token", "eos_token") if isinstance(cfg.get(k), str)}
    log.info("chat: using the chat_template of %s", path)

    def render(messages: Sequence[dict[str, str]]) -> str:
        try:
            return template.render(messages=list(messages), add_generation_prompt=True, **specials)
        except (TemplateError, ValueError) as e:
            from snowjax.serve.protocol import RequestError

            raise RequestError(f"messages: the model's chat template refused them: {e}", param="messages") from e

    return render
