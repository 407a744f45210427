"""Training documents from curated files: one per repository (StarCoder2 format) or one per file.

A repository document joins a repository's files of one language, in a seeded random order::

    <repo_name>owner/name<file_sep>path/a.py
    code of a<file_sep>path/b.py
    code of b<|endoftext|>

and, for the repositories whose metadata is dropped (each kept with probability
``metadata_probability``, decided per repository from the seed), ``<file_sep>code of
a<file_sep>code of b<|endoftext|>``. The structural tokens are inserted by id
(:mod:`snowjax.data.tokenizer` encodes their strings inside code as plain bytes), and each
file's code is tokenized on its own, so a file's tokens are the same in its repository
document and in its file-level document (``code<|endoftext|>``); decoding a document gives
exactly the text above.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence

import numpy as np

from snowjax.data.tokenizer import EOS_ID, EOS_TOKEN, FILE_SEP_ID, FILE_SEP_TOKEN, REPO_NAME_ID, REPO_NAME_TOKEN

Encode = Callable[[str], Sequence[int]]


def file_order(paths: Sequence[str], repo: str, seed: int) -> list[int]:
    """Indices of ``paths`` in the document's order: sorted by path, then shuffled by ``(seed, repo)``.

    Independent of the order the files arrive in (which varies with Beam's workers).
    """
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    random.Random(f"{seed}:{repo}:order").shuffle(order)
    return order


def keeps_metadata(repo: str, seed: int, probability: float) -> bool:
    """Whether ``repo``'s document starts with its name and paths (a seeded coin per repository)."""
    return random.Random(f"{seed}:{repo}:metadata").random() < probability


def validation_repo(repo: str, language: str, seed: int, fraction: float) -> bool:
    """Whether a (language, repository) document goes to the validation split (stable hash, ``fraction`` of them)."""
    if fraction <= 0:
        return False
    digest = hashlib.sha1(f"{seed}:{language}:{repo}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def repository_document(
    repo: str,
    files: Sequence[tuple[str, Sequence[int]]],
    encode: Encode,
    *,
    seed: int,
    metadata_probability: float,
) -> np.ndarray:
    """Token ids (int32, EOS last) of one repository's document from ``(path, code token ids)`` pairs."""
    order = file_order([path for path, _ in files], repo, seed)
    with_metadata = keeps_metadata(repo, seed, metadata_probability)
    parts: list[Sequence[int]] = []
    if with_metadata:
        parts += [[REPO_NAME_ID], encode(repo)]
    for i in order:
        path, code = files[i]
        parts.append([FILE_SEP_ID])
        if with_metadata:
            parts.append(encode(path + "\n"))
        parts.append(code)
    parts.append([EOS_ID])
    return np.concatenate([np.asarray(p, dtype=np.int32) for p in parts])


def repository_document_text(
    repo: str, files: Sequence[tuple[str, str]], *, seed: int, metadata_probability: float
) -> str:
    """The text that :func:`repository_document` encodes (for inspection and tests)."""
    order = file_order([path for path, _ in files], repo, seed)
    with_metadata = keeps_metadata(repo, seed, metadata_probability)
    head = f"{REPO_NAME_TOKEN}{repo}" if with_metadata else ""
    body = "".join(FILE_SEP_TOKEN + (f"{files[i][0]}\n" if with_metadata else "") + files[i][1] for i in order)
    return head + body + EOS_TOKEN


def file_document(code: Sequence[int]) -> np.ndarray:
    """A file-level document: its code's ids and EOS."""
    return np.append(np.asarray(code, dtype=np.int32), np.int32(EOS_ID))
