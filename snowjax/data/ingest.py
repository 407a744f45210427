"""Ingest: raw code from Parquet / JSONL files, local repository trees or a TFDS dataset, as file records.

A file record is a plain dict (what Beam moves between workers)::

    {"id": str, "content": str, "language": str, "repo": str, "path": str, "license": str, "stars": int}

``id`` is the SHA-1 of ``repo/path`` and the content, so it is stable across runs and unique
once exact duplicates are gone. ``language`` comes from the path's extension
(:mod:`snowjax.data.languages`); a row without a path falls back to its language column.

Ingest runs in two steps so a Beam pipeline can spread it over workers: :func:`plan_units`
lists small work units on the driver (a Parquet row group, a JSONL file, a batch of files of one
repository, a range of a TFDS split), and :func:`read_unit` turns one unit into records. Nothing
bad stops it: binary files, invalid UTF-8, empty files, files over the size cap, unknown
extensions, unreadable paths, symlinks and malformed rows come out as :class:`Dropped` items
with a reason, for the pipeline's counters.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import logging
import os
import re
import sysconfig
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Any, Literal, NamedTuple

from snowjax.data.languages import LANGUAGES, language_from_path, normalize_language

log = logging.getLogger(__name__)

FILES_PER_UNIT = 256  # files of one repository per work unit (trees)
ROWS_PER_TFDS_UNIT = 2048
ALWAYS_EXCLUDED = (".git", "__pycache__", ".hg", ".svn")
# Record fields and the column names other datasets use for them, first match wins.
# The Stack v1: content, lang, max_stars_repo_{name,path,licenses}, max_stars_count.
COLUMN_CANDIDATES: dict[str, tuple[str, ...]] = {
    "content": ("content", "text", "code"),
    "path": ("max_stars_repo_path", "path", "file_path", "filepath"),
    "repo": ("max_stars_repo_name", "repo", "repo_name", "repository"),
    "license": ("max_stars_repo_licenses", "license", "licenses"),
    "stars": ("max_stars_count", "stars", "star_count"),
    "language": ("lang", "language"),
}
_PYTHON_PATHS = {"python:stdlib": "stdlib", "python:purelib": "purelib", "python:include": "include"}


@dataclass
class IngestSource:
    """One input of the curation pipeline."""

    # parquet | jsonl: files (a path, directory or glob; .jsonl.gz too) with The Stack's or plain column names.
    # tree: a folder whose subfolders are repositories (files at its top form one more, named after it).
    # repo: one repository folder. git: a folder of git checkouts (names from each remote "origin").
    # tfds: a TFDS dataset in ArrayRecord format (``name`` + ``data_dir``, or ``path`` = its builder dir).
    kind: Literal["parquet", "jsonl", "tree", "repo", "git", "tfds"] = "tree"
    # Trees also accept python:stdlib, python:purelib (site-packages), python:include (C headers).
    path: str = ""
    name: str = ""  # tfds: the dataset name; any kind: the label in reports (default: kind:path)
    split: str = "train"  # tfds split
    exclude: list[str] = field(default_factory=list)  # trees: folder or file names (globs) to skip anywhere
    max_files: int = 0  # trees: at most this many files (first in sorted order); 0: all
    license: str = ""  # trees: license of repositories with no LICENSE/COPYING file of their own
    columns: dict[str, str] = field(default_factory=dict)  # field -> column name, overriding COLUMN_CANDIDATES

    @property
    def label(self) -> str:
        return self.name or f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class IngestLimits:
    max_file_bytes: int = 1_000_000  # larger files are dropped as too_large (The Stack's cap)


class Dropped(NamedTuple):
    """An input item that did not become a record: why, and how many bytes it had (0 if unknown)."""

    reason: str
    nbytes: int = 0


# A work unit: (kind, source label, arguments...) of JSON-able values, so Beam can ship it anywhere.
Unit = tuple[Any, ...]


# ---------------------------------------------------------------------------------- records


def record_id(repo: str, path: str, content: str) -> str:
    h = hashlib.sha1(f"{repo}/{path}\0".encode())
    h.update(content.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def make_record(
    data: bytes | str | None,
    *,
    path: str,
    repo: str,
    license: str = "",
    stars: int = 0,
    language_hint: str = "",
    limits: IngestLimits = IngestLimits(),
) -> dict[str, Any] | Dropped:
    """A file record, or why the file is skipped (unknown_extension, too_large, binary, invalid_utf8, empty)."""
    language = language_from_path(path) if path else None
    if language is None and not path and language_hint:
        hint = normalize_language(language_hint)
        language = hint if hint in LANGUAGES else None
    nbytes = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data or b"")
    if language is None:
        return Dropped("unknown_extension", nbytes)
    if data is None:
        return Dropped("malformed_row", 0)
    if nbytes > limits.max_file_bytes:
        return Dropped("too_large", nbytes)
    if isinstance(data, bytes):
        if b"\0" in data:
            return Dropped("binary", nbytes)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return Dropped("invalid_utf8", nbytes)
    else:
        if "\0" in data:
            return Dropped("binary", nbytes)
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from a lenient reader
            return Dropped("invalid_utf8", nbytes)
        text = data
    if not text.strip():
        return Dropped("empty", nbytes)
    return {
        "id": record_id(repo, path, text),
        "content": text,
        "language": language,
        "repo": repo,
        "path": path,
        "license": license,
        "stars": stars,
    }


def _license_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):  # The Stack: a list of SPDX ids; keep them all, comma-separated
        return ",".join(str(v) for v in value if v)
    return "" if value is None else str(value)


def _stars_value(value: Any) -> int:
    try:
        return max(0, int(value)) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _row_to_record(
    row: Mapping[str, Any], columns: Mapping[str, str], limits: IngestLimits
) -> dict[str, Any] | Dropped:
    content = row.get(columns["content"]) if "content" in columns else None
    if not isinstance(content, (str, bytes)):
        return Dropped("malformed_row")
    path = row.get(columns.get("path", ""), "") or ""
    repo = row.get(columns.get("repo", ""), "") or ""
    lang = row.get(columns.get("language", ""), "") or ""
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    if isinstance(repo, bytes):
        repo = repo.decode("utf-8", "replace")
    if not isinstance(path, str) or not isinstance(repo, str) or not isinstance(lang, (str, bytes)):
        return Dropped("malformed_row")
    if isinstance(lang, bytes):
        lang = lang.decode("utf-8", "replace")
    return make_record(
        content,
        path=path,
        repo=repo,
        license=_license_value(row.get(columns.get("license", ""))),
        stars=_stars_value(row.get(columns.get("stars", ""))),
        language_hint=lang,
        limits=limits,
    )


def resolve_columns(available: list[str], overrides: Mapping[str, str]) -> dict[str, str]:
    """Which column holds each record field: the config's ``columns`` first, then known names."""
    columns = {}
    for fld, names in COLUMN_CANDIDATES.items():
        if fld in overrides:
            columns[fld] = overrides[fld]
            continue
        for name in names:
            if name in available:
                columns[fld] = name
                break
    return columns


# ---------------------------------------------------------------------------------- planning


def resolve_path(path: str) -> str:
    """``python:stdlib`` / ``python:purelib`` / ``python:include`` -> this interpreter's folder; others as given."""
    if path in _PYTHON_PATHS:
        return sysconfig.get_paths()[_PYTHON_PATHS[path]]
    return os.path.expanduser(path)


def _input_files(path: str, suffixes: tuple[str, ...]) -> list[str]:
    p = Path(path)
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
    matches = sorted(glob(path, recursive=True))
    if not matches:
        raise FileNotFoundError(f"no input files match {path}")
    return matches


def _git_repo_name(repo_dir: Path) -> str:
    """``owner/name`` from the checkout's remote "origin" URL, else the folder name."""
    try:
        text = (repo_dir / ".git" / "config").read_text(errors="replace")
    except OSError:
        return repo_dir.name
    m = re.search(r'\[remote "origin"\][^\[]*?url\s*=\s*(\S+)', text)
    if not m:
        return repo_dir.name
    url = m.group(1).removesuffix(".git").rstrip("/")
    parts = re.split(r"[/:]", url)
    return "/".join(parts[-2:]) if len(parts) >= 2 else repo_dir.name


_LICENSE_PATTERNS = (  # first match wins; on the text of a LICENSE / COPYING file
    ("apache-2.0", r"apache license,?\s+version 2\.0"),
    ("mit", r"permission is hereby granted, free of charge"),
    ("bsd-3-clause", r"neither the name of .{0,200}? nor the names of its"),
    ("bsd-2-clause", r"redistributions in binary form must reproduce"),
    ("isc", r"permission to use, copy, modify, and(/or)? distribute this software for any purpose"),
    ("unlicense", r"this is free and unencumbered software released into the public domain"),
    ("mpl-2.0", r"mozilla public license,?\s+v(ersion)?\.? ?2\.0"),
    ("lgpl-3.0", r"gnu lesser general public license\s+version 3"),
    ("gpl-3.0", r"gnu general public license\s+version 3"),
    ("gpl-2.0", r"gnu general public license\s+version 2"),
    ("psf-2.0", r"python software foundation license"),
)


def detect_license(repo_dir: Path) -> str:
    """SPDX id of the repository's LICENSE / LICENCE / COPYING file by its wording, or ``""``."""
    try:
        names = sorted(os.listdir(repo_dir))
    except OSError:
        return ""
    for name in names:
        if not name.upper().startswith(("LICENSE", "LICENCE", "COPYING")):
            continue
        try:
            text = (repo_dir / name).read_text(errors="replace")[:20000].lower()
        except OSError:
            continue
        text = re.sub(r"\s+", " ", text)
        for spdx, pattern in _LICENSE_PATTERNS:
            if re.search(pattern, text):
                return spdx
    return ""


def _excluded(name: str, patterns: set[str]) -> bool:
    return name in patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _walk_files(root: Path, exclude: set[str], drops: Counter[str]) -> Iterator[str]:
    """Paths relative to ``root`` of regular files under it, sorted; symlinks counted, never followed."""

    def onerror(err: OSError) -> None:
        drops["unreadable"] += 1

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
        base = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            if _excluded(d, exclude):
                continue
            if (base / d).is_symlink():
                drops["symlink"] += 1
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if _excluded(name, exclude):
                continue
            full = base / name
            if full.is_symlink():
                drops["symlink"] += 1
                continue
            yield full.relative_to(root).as_posix()


def _tree_repos(source: IngestSource, root: Path) -> list[tuple[str, Path, bool]]:
    """(repository name, folder, whether to descend) for a tree / repo / git source."""
    if source.kind == "repo":
        return [(root.name, root, True)]
    excluded = set(ALWAYS_EXCLUDED) | set(source.exclude)
    repos = []
    loose = False
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if _excluded(entry.name, excluded):
            continue
        if entry.is_dir(follow_symlinks=False):
            name = _git_repo_name(Path(entry.path)) if source.kind == "git" else entry.name
            repos.append((name, Path(entry.path), True))
        elif entry.is_file(follow_symlinks=False):
            loose = True
    if loose and source.kind == "tree":  # files directly under the root: one repository named after it
        repos.insert(0, (root.name, root, False))
    return repos


def _plan_tree(source: IngestSource, drops: Counter[str]) -> list[Unit]:
    root = Path(resolve_path(source.path))
    if not root.is_dir():
        raise FileNotFoundError(f"{source.label}: {root} is not a folder")
    excluded = set(ALWAYS_EXCLUDED) | set(source.exclude)
    units: list[Unit] = []
    total = 0
    for repo, folder, descend in _tree_repos(source, root):
        if descend:
            paths = list(_walk_files(folder, excluded, drops))
        else:
            paths = sorted(
                e.name
                for e in os.scandir(folder)
                if e.is_file(follow_symlinks=False) and not _excluded(e.name, excluded)
            )
        if source.max_files:
            paths = paths[: max(0, source.max_files - total)]
        if not paths:
            continue
        total += len(paths)
        license = detect_license(folder) or source.license
        for i in range(0, len(paths), FILES_PER_UNIT):
            units.append(("tree", source.label, repo, str(folder), license, paths[i : i + FILES_PER_UNIT]))
        if source.max_files and total >= source.max_files:
            break
    return units


def _plan_parquet(source: IngestSource) -> list[Unit]:
    import pyarrow.parquet as pq

    units: list[Unit] = []
    for f in _input_files(resolve_path(source.path), (".parquet",)):
        try:
            groups = pq.ParquetFile(f).metadata.num_row_groups
        except Exception:  # unreadable or not Parquet: one unit that reports it
            groups = 0
        units.extend(("parquet", source.label, f, g, source.columns) for g in range(groups) or [-1])
    return units


def _plan_tfds(source: IngestSource) -> list[Unit]:
    size = len(_tfds_source(source.name, source.path, source.split))
    label, stop = source.label, lambda start: min(start + ROWS_PER_TFDS_UNIT, size)
    return [
        ("tfds", label, source.name, source.path, source.split, start, stop(start), source.columns)
        for start in range(0, size, ROWS_PER_TFDS_UNIT)
    ]


def plan_units(source: IngestSource) -> tuple[list[Unit], Counter[str]]:
    """The work units of one source, and items dropped while listing them (symlinks, unreadable folders)."""
    drops: Counter[str] = Counter()
    if source.kind in ("tree", "repo", "git"):
        units = _plan_tree(source, drops)
    elif source.kind == "parquet":
        units = _plan_parquet(source)
    elif source.kind == "jsonl":
        files = _input_files(resolve_path(source.path), (".jsonl", ".jsonl.gz", ".json", ".json.gz"))
        units = [("jsonl", source.label, f, source.columns) for f in files]
    elif source.kind == "tfds":
        units = _plan_tfds(source)
    else:
        raise ValueError(f"unknown source kind {source.kind!r}")
    log.info("%s: %d work units%s", source.label, len(units), f", dropped while listing {dict(drops)}" if drops else "")
    return units, drops


# ---------------------------------------------------------------------------------- reading


def _read_tree(unit: Unit, limits: IngestLimits) -> Iterator[dict[str, Any] | Dropped]:
    _, _, repo, folder, license, paths = unit
    for rel in paths:
        full = os.path.join(folder, rel)
        try:
            if os.path.getsize(full) > limits.max_file_bytes:
                yield Dropped("too_large", os.path.getsize(full))
                continue
            with open(full, "rb") as fh:
                data = fh.read()
        except OSError:
            yield Dropped("unreadable")
            continue
        yield make_record(data, path=rel, repo=repo, license=license, limits=limits)


def _read_parquet(unit: Unit, limits: IngestLimits) -> Iterator[dict[str, Any] | Dropped]:
    import pyarrow.parquet as pq

    _, _, path, group, overrides = unit
    try:
        pf = pq.ParquetFile(path)
        table = pf.read_row_group(group) if group >= 0 else None
    except Exception as e:
        log.warning("unreadable Parquet %s (row group %s): %s", path, group, e)
        table = None
    if table is None:
        yield Dropped("unreadable_file", os.path.getsize(path) if os.path.exists(path) else 0)
        return
    columns = resolve_columns(table.column_names, overrides)
    for row in table.to_pylist():
        yield _row_to_record(row, columns, limits)


def _open_text(path: str) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="\n")


def _read_jsonl(unit: Unit, limits: IngestLimits) -> Iterator[dict[str, Any] | Dropped]:
    _, _, path, overrides = unit
    columns: dict[str, str] | None = None
    try:
        fh = _open_text(path)
    except OSError:
        yield Dropped("unreadable_file")
        return
    with fh:
        try:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeError):
                    yield Dropped("malformed_row", len(line))
                    continue
                if not isinstance(row, dict):
                    yield Dropped("malformed_row", len(line))
                    continue
                if columns is None:
                    columns = resolve_columns(list(row), overrides)
                yield _row_to_record(row, columns, limits)
        except (OSError, EOFError, gzip.BadGzipFile) as e:  # truncated gzip, I/O error mid-file
            log.warning("stopped reading %s: %s", path, e)
            yield Dropped("unreadable_file")


def _tfds_source(name: str, path: str, split: str) -> Any:
    import tensorflow_datasets as tfds

    if path and not name:
        return tfds.builder_from_directory(path).as_data_source(split=split)
    return tfds.data_source(name, split=split, data_dir=path or None, try_gcs=False, download=False)


def _read_tfds(unit: Unit, limits: IngestLimits) -> Iterator[dict[str, Any] | Dropped]:
    _, _, name, path, split, start, stop, overrides = unit
    source = _tfds_source(name, path, split)
    columns: dict[str, str] | None = None
    for i in range(start, stop):
        try:
            row = source[i]
        except Exception:
            yield Dropped("malformed_row")
            continue
        if columns is None:
            columns = resolve_columns(list(row), overrides)
        yield _row_to_record(row, columns, limits)


_READERS = {"tree": _read_tree, "parquet": _read_parquet, "jsonl": _read_jsonl, "tfds": _read_tfds}


def read_unit(unit: Unit, limits: IngestLimits = IngestLimits()) -> Iterator[dict[str, Any] | Dropped]:
    """The records (and drops) of one work unit from :func:`plan_units`."""
    yield from _READERS[unit[0]](unit, limits)
