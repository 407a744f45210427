"""Byte-level BPE tokenizer (Hugging Face ``tokenizers``) with snowjax's fixed special tokens.

Special tokens take the first ids, in this order, in every snowjax tokenizer:

==  =================  ===========================================================
id  token              use
==  =================  ===========================================================
0   ``<|endoftext|>``  end of document; appended to every document, separates them
1   ``<pad>``          padding in packed rows (masked by segment id 0)
2   ``<repo_name>``    repository-level documents: precedes the repository name
3   ``<file_sep>``     repository-level documents: separates files
4   ``<fim_prefix>``   fill-in-the-middle (FIM) training and infilling prompts
5   ``<fim_middle>``   (StarCoder's PSM layout: prefix, suffix, then the middle)
6   ``<fim_suffix>``
7   ``<fim_pad>``
==  =================  ===========================================================

Tokenizers trained before the FIM tokens existed (ids 0-3 only) still load; a
tokenizer that has a FIM token must have it at the id above.

Text is encoded literally: a special token's string appearing inside a source file
(``"<|endoftext|>"`` in a tokenizer's own code, say) is encoded as ordinary bytes,
never as the special id, so documents cannot forge separators. Structural tokens are
inserted by id (:data:`FILE_SEP_ID`, ...). ``decode(encode(text)) == text`` for any
Unicode text: byte-level BPE with no normalizer loses nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
REPO_NAME_TOKEN = "<repo_name>"
FILE_SEP_TOKEN = "<file_sep>"
FIM_TOKENS: tuple[str, ...] = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>")
CORE_SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN, REPO_NAME_TOKEN, FILE_SEP_TOKEN)
SPECIAL_TOKENS: tuple[str, ...] = (*CORE_SPECIAL_TOKENS, *FIM_TOKENS)
EOS_ID, PAD_ID, REPO_NAME_ID, FILE_SEP_ID, FIM_PREFIX_ID, FIM_MIDDLE_ID, FIM_SUFFIX_ID, FIM_PAD_ID = range(
    len(SPECIAL_TOKENS)
)

TOKENIZER_FILENAME = "tokenizer.json"
_UNUSED_TOKEN = "<|unused_{}|>"
_NUM_BYTES = 256
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + _NUM_BYTES


def _literal_text(tok: Tokenizer) -> Tokenizer:
    """Make ``tok`` encode special-token strings found in text as ordinary bytes.

    ``tokenizers`` does not persist this flag in ``tokenizer.json``, so it is set on
    every tokenizer this module creates or loads.
    """
    tok.encode_special_tokens = True
    return tok


def _check_special_ids(tok: Tokenizer, where: str) -> None:
    for want_id, token in enumerate(SPECIAL_TOKENS):
        got = tok.token_to_id(token)
        if got is None and token in FIM_TOKENS:
            continue  # an older tokenizer without FIM tokens
        if got != want_id:
            raise ValueError(f"{where}: special token {token!r} has id {got}, snowjax needs {want_id}")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 0) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts``.

    Args:
      texts: training documents (an iterable is consumed once).
      vocab_size: exact size of the returned vocabulary, special tokens and the 256
        byte symbols included; at least :data:`MIN_VOCAB_SIZE`.
      min_frequency: a merge must occur at least this often to be learned.

    Returns:
      A tokenizer with ``get_vocab_size() == vocab_size``. When the corpus is too
      small to learn enough merges, the remaining ids are filled with never-produced
      ``<|unused_N|>`` tokens so the model's embedding size is what was asked.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size} is below the minimum {MIN_VOCAB_SIZE} (specials + 256 bytes)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    learned = tok.get_vocab_size()
    if learned < vocab_size:
        log.warning("corpus yields only %d tokens; filling to %d with unused tokens", learned, vocab_size)
        tok.add_special_tokens([_UNUSED_TOKEN.format(i) for i in range(vocab_size - learned)])
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"trained vocabulary has {tok.get_vocab_size()} tokens, asked for {vocab_size}")
    _check_special_ids(tok, "trained tokenizer")
    return _literal_text(tok)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` (or a directory holding one, such as a dataset dir).

    Raises:
      FileNotFoundError: no tokenizer file at ``path``.
      ValueError: the special tokens do not have snowjax's fixed ids.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    tok = Tokenizer.from_file(str(path))
    _check_special_ids(tok, str(path))
    return _literal_text(tok)


def encode_document(tok: Tokenizer, text: str) -> np.ndarray:
    """Token ids of one document followed by EOS: int32, shape ``(n + 1,)``."""
    ids = tok.encode(text, add_special_tokens=False).ids
    return np.asarray([*ids, EOS_ID], dtype=np.int32)


# GPT-2's pre-tokenizer pattern (what ByteLevel(use_regex=True) splits with) on ASCII text, where
# \p{L} is [A-Za-z], \p{N} is [0-9] and Unicode's White_Space is re.ASCII's \s ([ \t\n\v\f\r]).
_ASCII_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+", re.ASCII)
# GPT-2's byte-to-character map of the ByteLevel pre-tokenizer, for the ASCII bytes: printable
# characters stand for themselves, the others (space, controls, DEL) for chr(256 + k) in byte order.
_PRINTABLE = set(range(ord("!"), ord("~") + 1))
_BYTE_CHAR = str.maketrans(
    {
        chr(b): chr(b) if b in _PRINTABLE else chr(256 + sum(1 for c in range(b) if c not in _PRINTABLE))
        for b in range(128)
    }
)


class _PieceCache:
    """Exact ids of ASCII texts from ``tok``'s own model, one call per distinct pre-token.

    Valid only for the tokenizers :func:`_piece_cache` accepts: no normalizer, the plain
    ``ByteLevel(add_prefix_space=False, use_regex=True)`` pre-tokenizer, only special added
    tokens (ignored as text under ``encode_special_tokens``), no truncation or padding. Then
    ``tok.encode(text)`` is the model's tokens of each regex piece, byte-mapped, one after the
    other, which is what this computes, with each piece's tokens remembered. Code repeats its
    identifiers, so most pieces are looked up, not merged (benchmarks/curation.py: 2.2x
    ``encode_batch_fast``'s throughput per core on 19 MB of the standard library, ~3x on its
    ASCII files alone; same ids).
    """

    MAX_PIECES = 1 << 19  # remembered pieces (~100 MB) before the memory is cleared

    def __init__(self, tok: Tokenizer):
        self.tokenize = tok.model.tokenize
        self.ids: dict[str, list[int]] = {}

    def _piece(self, piece: str) -> list[int]:
        if len(self.ids) >= self.MAX_PIECES:
            self.ids.clear()
        ids = self.ids[piece] = [t.id for t in self.tokenize(piece.translate(_BYTE_CHAR))]
        return ids

    def encode(self, text: str) -> list[int]:
        known, piece_ids = self.ids.get, self._piece
        out: list[int] = []
        for piece in _ASCII_PIECES.findall(text):
            ids = known(piece)
            out += ids if ids is not None else piece_ids(piece)
        return out


_PIECE_CACHES: dict[int, tuple[Tokenizer, _PieceCache | None]] = {}


def _piece_cache(tok: Tokenizer) -> _PieceCache | None:
    """The :class:`_PieceCache` of ``tok`` (made once per tokenizer object), or None where it would not be exact."""
    entry = _PIECE_CACHES.get(id(tok))
    if entry is None or entry[0] is not tok:
        spec = json.loads(tok.to_str())
        pre = spec.get("pre_tokenizer") or {}
        exact = (
            spec.get("normalizer") is None
            and spec.get("truncation") is None
            and spec.get("padding") is None
            and pre.get("type") == "ByteLevel"
            and pre.get("add_prefix_space") is False
            and pre.get("use_regex", True) is True
            and all(t.get("special") for t in spec.get("added_tokens", []))
        )
        if len(_PIECE_CACHES) >= 8:
            _PIECE_CACHES.clear()
        entry = _PIECE_CACHES[id(tok)] = (tok, _PieceCache(tok) if exact else None)
    return entry[1] if tok.encode_special_tokens else None


def encode_ids_batch(tok: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids (int32, no EOS) of many texts at once: exactly ``tok.encode(text, add_special_tokens=False).ids``.

    ASCII texts of a snowjax byte-level BPE go through :class:`_PieceCache` (one process, ~3x
    faster per core on ASCII code); the others through ``encode_batch_fast`` (parallel in ``tokenizers``, no
    character offsets) where the installed ``tokenizers`` has it, else ``encode_batch``.
    """
    texts = list(texts)
    out: list[np.ndarray | None] = [None] * len(texts)
    cache = _piece_cache(tok)
    rest = []
    for i, text in enumerate(texts):
        if cache is not None and text.isascii():
            out[i] = np.array(cache.encode(text), dtype=np.int32)
        else:
            rest.append(i)
    if rest:
        encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
        for i, e in zip(rest, encode([texts[i] for i in rest], add_special_tokens=False), strict=True):
            out[i] = np.asarray(e.ids, dtype=np.int32)
    return out  # type: ignore[return-value]


def encode_documents(tok: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """:func:`encode_document` for many texts at once (parallel in ``tokenizers``)."""
    return [np.append(ids, np.int32(EOS_ID)) for ids in encode_ids_batch(tok, texts)]


def decode(tok: Tokenizer, ids: Sequence[int] | np.ndarray) -> str:
    """Text of ``ids``, special tokens kept (the exact inverse of encoding)."""
    return tok.decode([int(i) for i in ids], skip_special_tokens=False)
