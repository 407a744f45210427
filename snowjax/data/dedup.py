"""Exact and near (MinHash + LSH) deduplication of file records: the pure pieces the pipeline composes.

- **Exact**: :func:`normalized_content_hash` (whitespace-insensitive), one file kept per hash.
- **Near** (BigCode / StarCoder): word 5-gram shingles (:mod:`snowjax.data.shingles`), a 256-value
  MinHash signature per file (:class:`MinHasher`), LSH with ``bands x rows`` chosen for the Jaccard
  threshold (:func:`lsh_params`), candidate pairs = files sharing a band (:func:`band_keys`),
  connected components (:class:`UnionFind`), and one file kept per component (:func:`keeper_sort_key`:
  permissive license, then more stars, then the smallest id). :func:`near_duplicate_groups` runs the
  whole chain in memory; the Beam pipeline runs the same functions on its workers.

MinHash values are datasketch's (``datasketch.MinHash``, v2.0): the permutation parameters come from
``numpy.random.RandomState(seed)`` drawn in datasketch's order, and the two schemes are its
``"legacy"`` (``(a*h + b) mod (2^61 - 1)``, truncated to 32 bits; the default here, BigCode's choice)
and ``"affine32"`` (MurmurHash3-fmix32 of h, then ``a*h + b mod 2^32``). With
``shingle_hash="sha1"`` (datasketch's default hash of each shingle's bytes) signatures are bit for
bit those of ``MinHash(num_perm, seed, scheme)`` updated with the same shingles; the default
``"fast"`` hashes shingles with the compiled 64-bit hash of :mod:`snowjax.data.shingles` (its top
32 bits), which changes individual signatures but not their statistics, at a fraction of the cost.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from snowjax.config import ConfigError
from snowjax.data import shingles

log = logging.getLogger(__name__)

MERSENNE_PRIME = (1 << 61) - 1
MAX_HASH = (1 << 32) - 1  # every signature value is <= this; an empty file's signature is all MAX_HASH


# --------------------------------------------------------------------------- exact dedup


def normalized_content_hash(content: str) -> str:
    """Hex BLAKE2b-128 of ``content`` with its whitespace normalised, for exact dedup.

    Normalisation: every run of whitespace (``str.split()``: spaces, tabs, any line ending,
    Unicode spaces) becomes one space and leading/trailing whitespace goes, so CRLF/LF, trailing
    spaces, blank lines, tabs vs spaces and re-indentation do not make two files different.
    """
    normal = " ".join(content.split())
    return hashlib.blake2b(normal.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


# --------------------------------------------------------------------------- MinHash


@dataclass
class MinHashConfig:
    """Near-dedup parameters (BigCode: word 5-grams, 256 permutations, Jaccard 0.7)."""

    num_perm: int = 256  # signature length: permutations of the shingle hashes
    ngram: int = 5  # words per shingle
    threshold: float = 0.7  # Jaccard similarity above which two files are near-duplicates
    seed: int = 42  # draws the permutation parameters (numpy RandomState, as datasketch)
    scheme: Literal["legacy", "affine32"] = "legacy"  # datasketch's permutation schemes (module doc)
    shingle_hash: Literal["fast", "sha1"] = "fast"  # sha1: datasketch's hash, bit-identical, ~10x slower
    bands: int = 0  # LSH bands; 0 with rows 0: chosen by lsh_params(threshold, num_perm)
    rows: int = 0  # values per band

    def __post_init__(self) -> None:
        if self.num_perm < 1:
            raise ConfigError(f"num_perm: must be >= 1, got {self.num_perm}")
        if self.ngram < 1:
            raise ConfigError(f"ngram: must be >= 1, got {self.ngram}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold: a Jaccard similarity in (0, 1), got {self.threshold}")
        if self.scheme not in ("legacy", "affine32"):
            raise ConfigError(f"scheme: 'legacy' or 'affine32', got {self.scheme!r}")
        if self.shingle_hash not in ("fast", "sha1"):
            raise ConfigError(f"shingle_hash: 'fast' or 'sha1', got {self.shingle_hash!r}")
        if (self.bands == 0) != (self.rows == 0):
            raise ConfigError("bands, rows: give both or neither (0 chooses them from the threshold)")
        if self.bands < 0 or self.rows < 0 or self.bands * self.rows > self.num_perm:
            raise ConfigError(f"bands x rows: {self.bands} x {self.rows} must be <= num_perm {self.num_perm}")

    def lsh(self) -> tuple[int, int]:
        """(bands, rows): the configured ones, or the optimum for ``threshold``."""
        return (self.bands, self.rows) if self.bands else lsh_params(self.threshold, self.num_perm)


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows), ``bands * rows <= num_perm``, minimising P(false positive) + P(false negative).

    Two files of Jaccard similarity s share at least one band with probability
    ``1 - (1 - s^rows)^bands``. The false-positive probability is its integral over s in
    [0, threshold], the false-negative one the integral of its complement over [threshold, 1]
    (datasketch's criterion with equal weights). The integrands are polynomials of degree
    ``bands * rows``, so Gauss-Legendre quadrature with enough nodes integrates them exactly.
    Ties go to the fewest bands, then the fewest rows.
    """
    if not 0.0 < threshold < 1.0 or num_perm < 1:
        raise ValueError(f"need 0 < threshold < 1 and num_perm >= 1, got {threshold}, {num_perm}")
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 2)

    def integral(f: Any, lo: float, hi: float) -> np.ndarray:
        s = (hi - lo) / 2 * nodes + (hi + lo) / 2  # map [-1, 1] to [lo, hi]
        return (hi - lo) / 2 * (f(s) @ weights)

    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64)
    b, r = pairs[:, :1], pairs[:, 1:]
    fp = integral(lambda s: 1.0 - (1.0 - s**r) ** b, 0.0, threshold)
    fn = integral(lambda s: (1.0 - s**r) ** b, threshold, 1.0)
    best = int(np.argmin(fp + fn))  # first minimum in (bands, rows) order
    return int(pairs[best, 0]), int(pairs[best, 1])


def permutations(num_perm: int, seed: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each (num_perm,) uint64: datasketch's permutation parameters for ``seed`` and ``scheme``."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":  # (a, b) pairs drawn in turn, a in [1, p), b in [0, p)
        ab = np.array(
            [(gen.randint(1, MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, MERSENNE_PRIME, dtype=np.uint64))
             for _ in range(num_perm)],
            dtype=np.uint64,
        )  # fmt: skip
        return ab[:, 0].copy(), ab[:, 1].copy()
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)  # odd: a bijection
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a.astype(np.uint64), b.astype(np.uint64)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser on uint64 values < 2^32 (datasketch's affine32 pre-mix)."""
    m = np.uint64(MAX_HASH)
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(0x85EBCA6B)) & m
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(0xC2B2AE35)) & m
    return h ^ (h >> np.uint64(16))


def _min_hash_numpy(hv: np.ndarray, a: np.ndarray, b: np.ndarray, scheme: str, out: np.ndarray) -> None:
    """out[k] = min over h in hv of permutation k of h; blocks of 512 shingles keep the temporaries in cache."""
    out[:] = MAX_HASH
    if scheme == "affine32":
        hv = _fmix32(hv)
    with np.errstate(over="ignore"):
        for start in range(0, len(hv), 512):
            v = hv[start : start + 512, None] * a + b  # wraps mod 2^64, as datasketch's uint64 arithmetic
            v = v % np.uint64(MERSENNE_PRIME) if scheme == "legacy" else v
            np.minimum(out, (v & np.uint64(MAX_HASH)).min(axis=0).astype(np.uint32), out=out)


if shingles.HAVE_NUMBA:
    import numba

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def _min_hash_legacy(hv, a, b, out):  # pragma: no cover - compiled
        p = np.uint64((1 << 61) - 1)
        for i in range(len(hv)):
            h = hv[i]
            for k in range(len(a)):
                v = h * a[k] + b[k]  # mod 2^64
                v = (v & p) + (v >> np.uint64(61))  # v mod p for a Mersenne p, up to one subtraction
                if v >= p:
                    v -= p
                v &= np.uint64(0xFFFFFFFF)
                if v < out[k]:
                    out[k] = v

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def _min_hash_affine32(hv, a, b, out):  # pragma: no cover - compiled
        m = np.uint64(0xFFFFFFFF)
        for i in range(len(hv)):
            h = hv[i]
            h ^= h >> np.uint64(16)
            h = (h * np.uint64(0x85EBCA6B)) & m
            h ^= h >> np.uint64(13)
            h = (h * np.uint64(0xC2B2AE35)) & m
            h ^= h >> np.uint64(16)
            for k in range(len(a)):
                v = (h * a[k] + b[k]) & m
                if v < out[k]:
                    out[k] = v


class MinHasher:
    """MinHash signatures of texts under one :class:`MinHashConfig` (picklable; no state but parameters)."""

    def __init__(self, cfg: MinHashConfig | None = None, *, compiled: bool = True):
        self.cfg = cfg or MinHashConfig()
        self.a, self.b = permutations(self.cfg.num_perm, self.cfg.seed, self.cfg.scheme)
        self.compiled = compiled and shingles.HAVE_NUMBA  # False: the NumPy path (tests compare the two)

    def shingle_hashes(self, text: str) -> np.ndarray:
        """(G,) uint64 32-bit hashes of the text's word n-gram shingles (what the permutations see)."""
        n = self.cfg.ngram
        if self.cfg.shingle_hash == "sha1":
            grams = shingles.ngram_words(text, n)
            return np.array([int.from_bytes(hashlib.sha1(g).digest()[:4], "little") for g in grams], np.uint64)
        data = shingles.encode(text)
        grams = shingles.ngram_hashes(data, n) if self.compiled else shingles.ngram_hashes_numpy(data, n)
        return grams >> np.uint64(32)

    def signature(self, text: str) -> np.ndarray:
        """(num_perm,) uint32 MinHash of ``text``.

        A text with fewer words than ``ngram`` is one shingle of all its words; a text with no
        word (empty or whitespace only) has no shingle and gets the all-``MAX_HASH`` signature
        (datasketch's empty MinHash), so such files are near-duplicates of each other only.
        """
        out = np.full(self.cfg.num_perm, MAX_HASH, dtype=np.uint64 if self.compiled else np.uint32)
        hv = self.shingle_hashes(text)
        if len(hv):
            if self.compiled:
                kernel = _min_hash_legacy if self.cfg.scheme == "legacy" else _min_hash_affine32
                kernel(hv, self.a, self.b, out)
            else:
                _min_hash_numpy(hv, self.a, self.b, self.cfg.scheme, out)
        return out.astype(np.uint32)

    def signatures(self, texts: Iterable[str]) -> np.ndarray:
        """(N, num_perm) uint32 signatures, one row per text."""
        rows = [self.signature(t) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, self.cfg.num_perm), dtype=np.uint32)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal signature values: an unbiased estimate of the two files' shingle Jaccard similarity."""
    if a.shape != b.shape:
        raise ValueError(f"signatures of different lengths: {a.shape} vs {b.shape}")
    return float(np.count_nonzero(a == b)) / max(len(a), 1)


# --------------------------------------------------------------------------- LSH and clusters


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[bytes]:
    """One bucket key per band: the band index (2 bytes) + its ``rows`` values (little-endian uint32).

    Two files are candidates when any key is equal; the index prefix keeps equal values in
    different bands apart. Values past ``bands * rows`` are unused (as in datasketch).
    """
    if bands * rows > len(signature):
        raise ValueError(f"{bands} bands x {rows} rows exceed the signature length {len(signature)}")
    values = np.asarray(signature, dtype="<u4")
    return [struct.pack("<H", i) + values[i * rows : (i + 1) * rows].tobytes() for i in range(bands)]


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int, *, all_pairs: bool = True) -> set[tuple[int, int]]:
    """(i, j), i < j, row pairs of ``signatures`` (N, num_perm) that share a band bucket.

    ``all_pairs=False`` gives a spanning star per bucket (first member with each other one):
    the same connected components with linearly many pairs.
    """
    buckets: dict[bytes, list[int]] = defaultdict(list)
    for i, sig in enumerate(signatures):
        for key in band_keys(sig, bands, rows):
            buckets[key].append(i)
    pairs: set[tuple[int, int]] = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        if all_pairs:
            pairs.update((x, y) for k, x in enumerate(members) for y in members[k + 1 :])
        else:
            pairs.update((members[0], y) for y in members[1:])
    return pairs


class UnionFind:
    """Disjoint sets of hashable ids with path compression and union by size."""

    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}
        self.size: dict[Hashable, int] = {}

    def find(self, x: Hashable) -> Hashable:
        """The representative of ``x``'s set (``x`` joins as a singleton if new)."""
        if x not in self.parent:
            self.parent[x] = x
            self.size[x] = 1
            return x
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # compress the path just walked
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, x: Hashable, y: Hashable) -> Hashable:
        """Merge the sets of ``x`` and ``y``; returns the new representative."""
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return rx
        if self.size[rx] < self.size[ry]:
            rx, ry = ry, rx
        self.parent[ry] = rx
        self.size[rx] += self.size[ry]
        return rx


def clusters_from_pairs(pairs: Iterable[tuple[Hashable, Hashable]]) -> dict[Hashable, Hashable]:
    """{id: root} for every id in ``pairs``; root = the smallest id of its connected component.

    The smallest member (not union-find's internal representative) makes the result independent
    of the order the pairs arrive in, e.g. from a different number of workers.
    """
    uf = UnionFind()
    for x, y in pairs:
        uf.union(x, y)
    smallest: dict[Hashable, Hashable] = {}
    for x in uf.parent:
        r = uf.find(x)
        if r not in smallest or x < smallest[r]:  # type: ignore[operator]
            smallest[r] = x
    return {x: smallest[uf.find(x)] for x in uf.parent}


# --------------------------------------------------------------------------- which file to keep

# SPDX ids (lower case) of permissive licenses; any "bsd-*" counts too.
PERMISSIVE_LICENSES: frozenset[str] = frozenset(
    {
        "mit", "mit-0", "x11", "isc", "0bsd", "bsd-1-clause", "bsd-2-clause", "bsd-2-clause-patent",
        "bsd-3-clause", "bsd-3-clause-clear", "bsd-4-clause", "apache-1.1", "apache-2.0", "unlicense",
        "cc0-1.0", "cc-by-3.0", "cc-by-4.0", "zlib", "libpng", "bsl-1.0", "psf-2.0", "python-2.0",
        "upl-1.0", "wtfpl", "ncsa", "postgresql", "artistic-2.0", "ms-pl", "afl-3.0", "ecl-2.0", "curl",
    }
)  # fmt: skip


def is_permissive(license: str | None) -> bool:
    """Whether an SPDX-ish license string is permissive (case-insensitive).

    ``A OR B`` (or ``A / B``) is permissive if any alternative is; ``A AND B`` and lists
    (``A, B``, ``A; B``: several licenses found in one repository) only if all are.
    """
    text = (license or "").strip().lower().replace("(", " ").replace(")", " ")
    if not text:
        return False

    def one(spdx: str) -> bool:
        spdx = spdx.strip()
        return spdx in PERMISSIVE_LICENSES or spdx.startswith("bsd-")

    alternatives = text.replace(" / ", " or ").split(" or ")
    for alt in alternatives:
        parts = [p for chunk in alt.split(" and ") for p in chunk.replace(";", ",").split(",")]
        if parts and all(one(p) for p in parts if p.strip()) and any(p.strip() for p in parts):
            return True
    return False


def keeper_sort_key(record: Mapping[str, Any]) -> tuple[int, int, str]:
    """Sort key so that ``min(cluster, key=keeper_sort_key)`` is the file a duplicate cluster keeps:
    permissive license first, then more stars, then the smallest ``id`` (stable across runs)."""
    try:
        stars = int(record.get("stars") or 0)
    except (TypeError, ValueError):
        stars = 0
    return (0 if is_permissive(record.get("license")) else 1, -stars, str(record.get("id", "")))


def near_duplicate_groups(records: Sequence[Mapping[str, Any]], cfg: MinHashConfig | None = None) -> list[list[Any]]:
    """Clusters (size >= 2) of near-duplicate records, as sorted lists of ids, sorted by first id.

    The in-memory reference of the near-dedup stage: signatures -> band buckets -> candidate
    pairs -> connected components. Records need ``id`` and ``content``.
    """
    cfg = cfg or MinHashConfig()
    bands, rows = cfg.lsh()
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("near_duplicate_groups: record ids must be unique")
    signatures = MinHasher(cfg).signatures(r["content"] for r in records)
    pairs = candidate_pairs(signatures, bands, rows, all_pairs=False)
    roots = clusters_from_pairs((ids[i], ids[j]) for i, j in pairs)
    groups: dict[Any, list[Any]] = defaultdict(list)
    for x, root in roots.items():
        groups[root].append(x)
    result = sorted(sorted(g) for g in groups.values())
    log.info(
        "near dedup: %d files, %d bands x %d rows, %d candidate pairs, %d clusters holding %d files",
        len(records), bands, rows, len(pairs), len(result), sum(map(len, result)),
    )  # fmt: skip
    return result


def duplicates_to_drop(records: Sequence[Mapping[str, Any]], groups: Iterable[Sequence[Any]]) -> dict[Any, Any]:
    """{dropped id: kept id}: every member of each group except the one :func:`keeper_sort_key` picks."""
    by_id = {r["id"]: r for r in records}
    dropped: dict[Any, Any] = {}
    for group in groups:
        keep = min((by_id[i] for i in group), key=keeper_sort_key)["id"]
        dropped.update({i: keep for i in group if i != keep})
    return dropped
