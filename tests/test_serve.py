"""`snowjax serve` on loopback: concurrent requests equal direct generation; bad requests get a clear 4xx."""

from __future__ import annotations

import asyncio
import json
import sysconfig
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import tiny_model

from snowjax.config import ModelConfig
from snowjax.data.tokenizer import decode, train_bpe_tokenizer
from snowjax.generate import SamplingConfig
from snowjax.serve import ServeConfig, ServerThread
from snowjax.serve.chat import CHAT_STOP, load_chat_template, render_default

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# A peaked random model (init_std 0.2): greedy choices are far from ties, so batching cannot flip them.
CFG = tiny_model(init_std=0.2, max_seq_len=128)
PAD = 16


def write_hf_model(out: Path, cfg: ModelConfig, params: Any, tokenizer_texts: list[str]) -> Path:
    """A Hugging Face directory (safetensors, config.json, tokenizer.json) of ``params``."""
    from snowjax.interop.hf import hf_config_dict, params_to_hf, save_safetensors

    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(params_to_hf(params, cfg), out, "5GB")
    (out / "config.json").write_text(json.dumps(hf_config_dict(cfg)))
    train_bpe_tokenizer(tokenizer_texts, cfg.vocab_size).save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Hugging Face directory (the export format) served on a free loopback port.

    (The synth end-to-end test serves a snowjax Orbax checkpoint.)
    """
    from flax import nnx

    from snowjax.model.decoder import Decoder

    root = tmp_path_factory.mktemp("serve")
    _, params = nnx.split(Decoder(CFG, nnx.Rngs(params=0)))
    texts = [p.read_text() for p in sorted(STDLIB.glob("*.py"))[:12]]
    hf = write_hf_model(root / "model", CFG, params, texts)
    cfg = ServeConfig(checkpoint=str(hf), port=0, max_batch=16, batch_wait_ms=50, pad_multiple=PAD, dtype="float32")
    server = ServerThread(cfg)
    with server as url:
        yield server, url


def _direct(server: ServerThread, prompt: str, max_tokens: int, stop: tuple[str, ...] = ()) -> tuple[str, str, int]:
    """(text, OpenAI finish reason, tokens) of a direct call of the server's Generator on this prompt alone.

    (The same Generator object as the server's, so its compiled shapes are shared; the call
    itself bypasses the server and its batching.)
    """
    gen, tok = server.engine.generator, server.loaded.tokenizer
    ids = tok.encode(prompt, add_special_tokens=False).ids
    g = gen.generate([ids], SamplingConfig(max_new_tokens=max_tokens, stop_sequences=stop), lambda r: decode(tok, r))[0]
    return g.text or "", "length" if g.finish_reason == "length" else "stop", len(g.tokens)


async def _post_all(url: str, path: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    async with aiohttp.ClientSession() as s:

        async def one(body: dict) -> tuple[int, dict]:
            async with s.post(url + path, json=body) as r:
                return r.status, await r.json()

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def test_concurrent_requests_equal_direct_generation(served: Any) -> None:
    server, url = served
    tok = server.loaded.tokenizer
    prompts = ["def add(a, b):", "import os\n", "class Stack:\n    def", "# compute the mean", "for i in range(", "x"]
    # Two max_tokens values (one compiled cache length): rows are cut back to their own request's.
    bodies: list[dict] = [{"prompt": p, "max_tokens": (5, 12)[i % 2], "temperature": 0} for i, p in enumerate(prompts)]
    bodies.append({"prompt": [prompts[0], prompts[3]], "max_tokens": 12, "n": 2, "temperature": 0})  # 4 rows
    before = server.engine.stats.batches
    replies = asyncio.run(_post_all(url, "/v1/completions", bodies))
    assert all(status == 200 for status, _ in replies), replies
    # Seven requests, ten rows: batched, so fewer generate calls than requests.
    assert server.engine.stats.batches - before < len(bodies)
    for body, (_, reply) in zip(bodies, replies, strict=True):
        ps = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        n = body.get("n", 1)
        want = [_direct(server, p, body["max_tokens"]) for p in ps for _ in range(n)]
        got = [(c["text"], c["finish_reason"]) for c in reply["choices"]]
        assert got == [(t, r) for t, r, _ in want]
        assert [c["index"] for c in reply["choices"]] == list(range(len(want)))
        prompt_tokens = sum(len(tok.encode(p, add_special_tokens=False).ids) for p in ps)
        assert reply["usage"] == {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": sum(k for _, _, k in want),
            "total_tokens": prompt_tokens + sum(k for _, _, k in want),
        }
        assert reply["object"] == "text_completion" and reply["model"] == "model"

    # A stop sequence taken from the middle of the greedy text cuts the reply there, as directly.
    full, _, _ = _direct(server, prompts[0], 12)
    stop = full[6:8]
    assert stop and full.find(stop) >= 0
    [(status, reply)] = asyncio.run(
        _post_all(url, "/v1/completions", [{"prompt": prompts[0], "max_tokens": 12, "temperature": 0, "stop": stop}])
    )
    assert status == 200
    assert reply["choices"][0]["text"] == full[: full.find(stop)] == _direct(server, prompts[0], 12, (stop,))[0]
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_chat_models_and_seeded_sampling(served: Any) -> None:
    server, url = served
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort a list."}]
    chat = {"messages": messages, "max_tokens": 12, "temperature": 0}
    sampled = {"prompt": "def f(x):", "max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    replies = asyncio.run(_post_all(url, "/v1/chat/completions", [chat]))
    replies += asyncio.run(_post_all(url, "/v1/completions", [sampled, sampled, {**sampled, "seed": 8}]))
    (s1, c1), (s2, a), (s3, b), (s4, c) = replies
    assert (s1, s2, s3, s4) == (200, 200, 200, 200)
    assert c1["object"] == "chat.completion" and c1["choices"][0]["message"]["role"] == "assistant"
    assert render_default(messages) == "### System\nBe brief.\n\n### User\nSort a list.\n\n### Assistant\n"
    want, reason, _ = _direct(server, render_default(messages), 12, CHAT_STOP)
    assert (c1["choices"][0]["message"]["content"], c1["choices"][0]["finish_reason"]) == (want, reason)
    # The same seeded request twice gives the same sample (it runs alone, whatever else waits).
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["choices"][0]["text"] != c["choices"][0]["text"]

    async def models() -> dict:
        async with aiohttp.ClientSession() as s, s.get(url + "/v1/models") as r:
            return await r.json()

    listed = asyncio.run(models())
    assert [m["id"] for m in listed["data"]] == ["model"] and listed["data"][0]["max_model_len"] == CFG.max_seq_len


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/completions", {"max_tokens": 3}, 400, "prompt"),
        ("/v1/completions", {"prompt": 42}, 400, "prompt"),
        ("/v1/completions", {"prompt": ["a", 3]}, 400, "prompt"),
        ("/v1/completions", {"prompt": "a", "max_tokens": "3"}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "a", "temperature": "hot"}, 400, "temperature"),
        ("/v1/completions", {"prompt": "a", "top_p": 0}, 400, "top_p"),
        ("/v1/completions", {"prompt": "a", "n": 17}, 400, "n"),
        ("/v1/completions", {"prompt": "a", "stop": [1]}, 400, "stop"),
        ("/v1/completions", {"prompt": "a", "stream": True}, 400, "stream"),
        ("/v1/completions", {"prompt": "a", "logprobs": 5}, 400, "logprobs"),
        ("/v1/completions", {"prompt": "a", "model": "gpt-4"}, 404, "model"),
        ("/v1/completions", {"prompt": "word " * 200, "max_tokens": 4}, 400, "prompt"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 500}, 400, "max_tokens"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0]"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0]"),
        ("/v1/completions", [1, 2], 400, None),
    ],
)
def test_bad_requests_get_a_clear_4xx(served: Any, path: str, body: Any, status: int, param: str | None) -> None:
    _, url = served
    [(got, reply)] = asyncio.run(_post_all(url, path, [body]))
    assert got == status, reply
    assert reply["error"]["param"] == param and reply["error"]["message"]
    assert reply["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_malformed_json_and_long_prompts_name_the_problem(served: Any) -> None:
    _, url = served

    async def raw() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions", data=b"{not json") as r:
            return r.status, await r.json()

    status, reply = asyncio.run(raw())
    assert status == 400 and "not valid JSON" in reply["error"]["message"]
    [(status, reply)] = asyncio.run(_post_all(url, "/v1/completions", [{"prompt": "word " * 200, "max_tokens": 4}]))
    assert "context_length_exceeded" in reply["error"]["message"] and "max_seq_len 128" in reply["error"]["message"]


def test_a_hugging_face_chat_template_is_used_when_present(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"})
    )
    render = load_chat_template(tmp_path / "tokenizer.json")
    assert render is not None
    assert render([{"role": "user", "content": "hi"}]) == "<user>hi<assistant>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    assert load_chat_template(tmp_path / "tokenizer.json") is None


def test_serve_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    from snowjax.cli import main

    assert main(["serve", "--checkpoint", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert main(["serve", "--checkpoint", str(tmp_path), "--max-batch", "0"]) == 2


@pytest.mark.parametrize(("max_wait_s", "one_batch"), [(2.0, True), (0.1, False)])
def test_requests_arriving_in_a_stream_share_a_batch(served: Any, max_wait_s: float, one_batch: bool) -> None:
    """Six requests 40 ms apart: one batch while each arrives within batch_wait of the last (up to the cap)."""
    from snowjax.serve.batching import BatchingEngine

    server, _ = served
    ids = server.loaded.tokenizer.encode("def add(a, b):", add_special_tokens=False).ids

    async def run() -> int:
        engine = BatchingEngine(
            server.engine.generator, lambda r: "", max_batch=16, batch_wait_s=0.1, max_batch_wait_s=max_wait_s
        )
        await engine.start()
        try:
            tasks = []
            for _ in range(6):
                tasks.append(asyncio.create_task(engine.generate([ids], 2, temperature=0.0, top_p=1.0)))
                await asyncio.sleep(0.04)
            await asyncio.gather(*tasks)
        finally:
            await engine.stop()
        return engine.stats.batches

    batches = asyncio.run(run())
    assert (batches == 1) == one_batch, batches
