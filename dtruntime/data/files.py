"""Dataset files on any fsspec filesystem: discovery by format and cached sample counts.

Files are discovered under ``path`` (a file or a directory, searched recursively) by their
extension and sorted by path, so every worker numbers samples identically: sample ``i`` is
row ``i - offset[f]`` of file ``f``. Sample counts come from metadata where the format has it
(the parquet footer) and from a scan otherwise (CSV rows, TFRecord framing); counts and the
TFRecord record index are cached per process, keyed by the file's URL, size and modification
stamp, so a changed file is rescanned.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from ..errors import DatasetError
from .readers import csv as csv_reader
from .readers import tfrecord

FORMATS: dict[str, tuple[str, ...]] = {
    "parquet": (".parquet", ".pq"),
    "csv": (".csv",),
    "tfrecord": (".tfrecord", ".tfrecords", ".tfr"),
}

_cache: dict[tuple[str, str, Any, str], Any] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class FileSlice:
    """Rows ``[row_start, row_end)`` of file ``path``, which are global samples starting at
    ``sample_start``."""

    path: str
    row_start: int
    row_end: int
    sample_start: int


def check_format(format: str | None) -> str:
    if format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; known formats: {', '.join(sorted(FORMATS))}")
    return format


def resolve(path: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and filesystem-local path of an fsspec URL."""
    if not isinstance(path, str) or not path:
        raise DatasetError(f"path must be a non-empty string (local path or fsspec URL), not {path!r}")
    try:
        return fsspec.core.url_to_fs(path, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise DatasetError(f"cannot open path {path!r}: {exc}") from exc


def infer_format(paths: Sequence[str]) -> str:
    found = {name for name, exts in FORMATS.items() for p in paths if p.lower().endswith(exts)}
    if len(found) != 1:
        what = "no files of a known format" if not found else f"files of several formats ({', '.join(sorted(found))})"
        raise DatasetError(f"format not given and cannot be inferred: found {what}")
    return found.pop()


def discover(fs: fsspec.AbstractFileSystem, root: str, format: str | None, url: str) -> tuple[str, list[str]]:
    """``(format, sorted file paths)`` under ``root``; DatasetError if missing or empty."""
    if format is not None:
        check_format(format)
    try:
        exists = fs.exists(root)
    except OSError as exc:
        raise DatasetError(f"cannot access path {url!r}: {exc}") from exc
    if not exists:
        raise DatasetError(f"path {url!r} does not exist")
    if fs.isfile(root):
        candidates = [root]
    else:
        candidates = sorted(p for p in fs.find(root) if not _hidden(p, root))
    fmt = format if format is not None else infer_format(candidates)
    files = sorted(p for p in candidates if p.lower().endswith(FORMATS[fmt]))
    if not files:
        raise DatasetError(f"path {url!r} holds no {fmt} files (extensions {', '.join(FORMATS[fmt])})")
    return fmt, files


def _hidden(path: str, root: str) -> bool:
    relative = path[len(root) :].lstrip("/")
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _stamp(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, Any, str]:
    info = fs.info(path)
    modified = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created") or ""
    return fs.unstrip_protocol(path), info.get("size"), str(modified)


def _cached(kind: str, fs: fsspec.AbstractFileSystem, path: str, compute: Any) -> Any:
    key = (kind, *_stamp(fs, path))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    value = compute()
    with _cache_lock:
        _cache[key] = value
    return value


def tfrecord_offsets(fs: fsspec.AbstractFileSystem, path: str, max_record_bytes: int) -> np.ndarray:
    def scan() -> np.ndarray:
        size = fs.size(path)
        with fs.open(path, "rb") as handle:
            return tfrecord.scan_offsets(handle, path, size, max_record_bytes)

    return _cached(f"tfrecord-index:{max_record_bytes}", fs, path, scan)


def count_samples(fs: fsspec.AbstractFileSystem, path: str, format: str, max_record_bytes: int) -> int:
    """Number of samples (rows or records) in one file, from metadata or a cached scan."""

    def parquet_rows() -> int:
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows

    def csv_rows() -> int:
        with fs.open(path, "rb") as handle:
            return csv_reader.count_rows(handle)

    try:
        if format == "parquet":
            return int(_cached("parquet-rows", fs, path, parquet_rows))
        if format == "csv":
            return int(_cached("csv-rows", fs, path, csv_rows))
        return len(tfrecord_offsets(fs, path, max_record_bytes))
    except DatasetError:
        raise
    except Exception as exc:  # a damaged or unreadable file: name it
        raise DatasetError(f"cannot count samples of {format} file {path!r}: {type(exc).__name__}: {exc}") from exc


def slices_for(paths: Sequence[str], file_offsets: Sequence[int], start: int, end: int) -> tuple[FileSlice, ...]:
    """The file slices covering global samples ``[start, end)``; ``file_offsets[-1]`` is the total."""
    slices = []
    index = int(np.searchsorted(file_offsets, start, side="right")) - 1
    position = start
    while position < end:
        while file_offsets[index + 1] <= position:
            index += 1
        stop = min(end, file_offsets[index + 1])
        base = file_offsets[index]
        slices.append(FileSlice(paths[index], position - base, stop - base, position))
        position = stop
    return tuple(slices)
