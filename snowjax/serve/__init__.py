"""``snowjax serve``: an OpenAI-compatible completions server over a checkpoint, with request batching.

- :mod:`~snowjax.serve.protocol`: request checks and response shapes (OpenAI's);
- :mod:`~snowjax.serve.chat`: chat messages -> a prompt for a base model;
- :mod:`~snowjax.serve.batching`: waiting requests -> batched ``Generator`` calls;
- :mod:`~snowjax.serve.app`: the aiohttp application, model loading, :class:`ServerThread`.
"""

from snowjax.serve.app import LoadedModel, ServeConfig, ServerThread, build_app, load_for_serving, serve

__all__ = ["LoadedModel", "ServeConfig", "ServerThread", "build_app", "load_for_serving", "serve"]
