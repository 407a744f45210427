"""Word n-gram ("shingle") hashes of a text: the input of MinHash near dedup and n-gram decontamination.

Definitions (shared by :mod:`snowjax.data.dedup` and :mod:`snowjax.data.decontam`):

- **Word**: a maximal run of bytes of the text's UTF-8 encoding that are not ASCII whitespace
  (space, ``\\t \\n \\r \\v \\f``): exactly ``text.encode("utf-8").split()``. Unicode-only spaces
  (no-break space, U+2028, ...) are part of words; code rarely has them. Punctuation stays in the
  word (``foo(x):`` is one word), as with datasketch's usual ``text.split()`` shingling.
- **Word n-gram**: ``n`` consecutive words, i.e. ``b" ".join(words[i:i + n])``: reformatting the
  whitespace between words does not change a shingle.
- **Word hash**: 64-bit FNV-1a over the word's bytes, then the MurmurHash3 64-bit finaliser of
  (that value xor the word's length).
- **N-gram hash**: FNV-1a-style fold of its word hashes in order (``g = (g ^ w) * FNV_PRIME``),
  then the finaliser: 64 bits, order-sensitive.

Two implementations compute bit-identical hashes: a compiled single pass over the bytes (numba,
about 1 ns per byte) and a vectorised NumPy one (used where numba is missing, and in the tests
to check the compiled one).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
_M1 = np.uint64(0xFF51AFD7ED558CCD)  # MurmurHash3 fmix64 multipliers
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)

# bytes.split() whitespace: space, \t, \n, \v, \f, \r.
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D]] = True

try:  # the compiled kernels; NumPy computes the same values where numba is unavailable
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; the fallback keeps the module usable
    numba = None
    HAVE_NUMBA = False
    log.warning("numba is not installed: word n-gram hashing and MinHash fall back to NumPy (about 5x slower)")


def encode(text: str) -> np.ndarray:
    """``text`` as a uint8 array of its UTF-8 bytes (lone surrogates passed through, never an error)."""
    return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _S33)
    h = h * _M1
    h = h ^ (h >> _S33)
    h = h * _M2
    return h ^ (h >> _S33)


# --------------------------------------------------------------------------- NumPy implementation


def word_hashes_numpy(data: np.ndarray) -> np.ndarray:
    """(W,) uint64 hashes of the words of ``data`` (uint8 UTF-8 bytes), in order."""
    space = _WHITESPACE[data]
    edges = np.diff(np.concatenate(([True], space, [True])).view(np.int8))
    starts = np.flatnonzero(edges == -1)  # whitespace -> word
    ends = np.flatnonzero(edges == 1)  # word -> whitespace (exclusive end)
    lengths = ends - starts
    h = np.full(len(starts), FNV_OFFSET, dtype=np.uint64)
    # FNV-1a is sequential within a word, so step all words one byte position at a time:
    # the loop runs (longest word) times and touches every byte once.
    order = np.argsort(-lengths, kind="stable")  # words still active at step j are a prefix
    sorted_lengths = lengths[order]
    sorted_starts = starts[order]
    with np.errstate(over="ignore"):
        for j in range(int(sorted_lengths[0]) if len(order) else 0):
            active = int(np.searchsorted(-sorted_lengths, -j, side="left"))  # count with length > j
            idx = order[:active]
            h[idx] = (h[idx] ^ data[sorted_starts[:active] + j].astype(np.uint64)) * FNV_PRIME
        return _fmix64(h ^ lengths.astype(np.uint64))


def ngram_hashes_numpy(data: np.ndarray, n: int, short_as_one: bool = True) -> np.ndarray:
    """(G,) uint64 hashes of the word n-grams of ``data``; see :func:`ngram_hashes`."""
    words = word_hashes_numpy(data)
    count = len(words) - n + 1
    if count <= 0:
        if not short_as_one or len(words) == 0:
            return np.zeros(0, dtype=np.uint64)
        n, count = len(words), 1
    g = np.full(count, FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            g = (g ^ words[k : k + count]) * FNV_PRIME
        return _fmix64(g)


# --------------------------------------------------------------------------- compiled implementation

if HAVE_NUMBA:

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def _fmix64_scalar(h):  # pragma: no cover - compiled
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        return h ^ (h >> np.uint64(33))

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def _ngram_hashes_compiled(data, n, short_as_one, space):  # pragma: no cover - compiled
        words = np.empty(len(data) // 2 + 1, dtype=np.uint64)
        num_words = 0
        h = np.uint64(0xCBF29CE484222325)
        length = 0
        for i in range(len(data) + 1):
            if i == len(data) or space[data[i]]:
                if length:
                    words[num_words] = _fmix64_scalar(h ^ np.uint64(length))
                    num_words += 1
                    h = np.uint64(0xCBF29CE484222325)
                    length = 0
            else:
                h = (h ^ np.uint64(data[i])) * np.uint64(0x100000001B3)
                length += 1
        count = num_words - n + 1
        if count <= 0:
            if not short_as_one or num_words == 0:
                return np.zeros(0, dtype=np.uint64)
            n = num_words
            count = 1
        out = np.empty(count, dtype=np.uint64)
        for i in range(count):
            g = np.uint64(0xCBF29CE484222325)
            for k in range(n):
                g = (g ^ words[i + k]) * np.uint64(0x100000001B3)
            out[i] = _fmix64_scalar(g)
        return out


def ngram_hashes(text: str | bytes | np.ndarray, n: int, *, short_as_one: bool = True) -> np.ndarray:
    """(G,) uint64 hashes of the word ``n``-grams of ``text``, in order (duplicates kept).

    A text with fewer than ``n`` words (but at least one) gives one hash, of all its words,
    when ``short_as_one`` (MinHash: every non-empty file gets a signature), else none
    (decontamination: a short item has no ``n``-gram to share). A text with no word gives none.
    ``text`` may be a str, its UTF-8 bytes, or those bytes as a uint8 array.
    """
    if n < 1:
        raise ValueError(f"n-gram size must be >= 1, got {n}")
    if isinstance(text, str):
        data = encode(text)
    elif isinstance(text, bytes | bytearray | memoryview):
        data = np.frombuffer(text, dtype=np.uint8)
    else:
        data = text
    if HAVE_NUMBA:
        return _ngram_hashes_compiled(data, n, short_as_one, _WHITESPACE)
    return ngram_hashes_numpy(data, n, short_as_one)


def ngram_words(text: str, n: int, *, short_as_one: bool = True) -> list[bytes]:
    """The word n-grams themselves (``b" ".join`` of ``n`` words), as hashed by :func:`ngram_hashes`."""
    words = text.encode("utf-8", "surrogatepass").split()
    if len(words) < n:
        return [b" ".join(words)] if words and short_as_one else []
    return [b" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
