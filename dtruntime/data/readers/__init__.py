"""Shard readers: one module per format, and :func:`read_slice` to dispatch between them.

Parquet and CSV yield ``pyarrow.RecordBatch`` objects holding exactly the requested rows;
TFRecord yields each record's bytes. A :class:`OpenFiles` cache keeps the last few files open
(with their parsed parquet footers) across consecutive slices of the same file.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from ...errors import DatasetError
from . import csv, parquet, tfrecord

__all__ = ["OpenFiles", "csv", "parquet", "read_slice", "tfrecord"]


class OpenFiles:
    """A small LRU of open files (and parquet footers), closed on eviction and on :meth:`close`.

    Not thread-safe: one reader thread owns one instance.
    """

    def __init__(self, fs: Any, capacity: int = 4) -> None:
        self.fs = fs
        self.capacity = capacity
        self._open: OrderedDict[str, tuple[Any, Any]] = OrderedDict()

    def get(self, path: str, format: str) -> tuple[Any, Any]:
        """``(file handle, parsed object)``: the ParquetFile for parquet, None otherwise."""
        entry = self._open.get(path)
        if entry is not None:
            self._open.move_to_end(path)
            return entry
        handle = self.fs.open(path, "rb")
        try:
            parsed = None
            if format == "parquet":
                import pyarrow.parquet as pq

                parsed = pq.ParquetFile(handle)
        except BaseException:
            handle.close()
            raise
        self._open[path] = (handle, parsed)
        while len(self._open) > self.capacity:
            _, (old, _) = self._open.popitem(last=False)
            old.close()
        return handle, parsed

    def close(self) -> None:
        while self._open:
            _, (handle, _) = self._open.popitem()
            handle.close()


def read_slice(
    fs: Any,
    format: str,
    path: str,
    row_start: int,
    row_end: int,
    *,
    columns: Sequence[str] | None = None,
    max_record_bytes: int = tfrecord.DEFAULT_MAX_RECORD_BYTES,
    open_files: OpenFiles | None = None,
) -> Iterator[Any]:
    """Yield rows ``[row_start, row_end)`` of one file (batches for tables, bytes for TFRecord).

    Every failure is a :class:`DatasetError` naming the file (TFRecord damage keeps its
    subclass and offset).
    """
    try:
        yield from _read_slice(fs, format, path, row_start, row_end, columns, max_record_bytes, open_files)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(
            f"cannot read rows [{row_start}, {row_end}) of {format} file {path!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _read_slice(
    fs: Any,
    format: str,
    path: str,
    row_start: int,
    row_end: int,
    columns: Sequence[str] | None,
    max_record_bytes: int,
    open_files: OpenFiles | None,
) -> Iterator[Any]:
    if row_end <= row_start:
        return
    if format == "csv":
        with fs.open(path, "rb") as handle:
            for batch in csv.iter_row_batches(handle, row_start, row_end):
                yield batch.select(list(columns)) if columns is not None else batch
        return
    if format not in ("parquet", "tfrecord"):
        raise DatasetError(f"unknown format {format!r}")
    files = open_files if open_files is not None else OpenFiles(fs, capacity=1)
    try:
        handle, parsed = files.get(path, format)
        if format == "parquet":
            yield from parquet.read_rows(parsed, row_start, row_end, columns).to_batches()
        else:
            from ..files import tfrecord_offsets

            offsets = tfrecord_offsets(fs, path, max_record_bytes)
            if row_end > len(offsets):
                raise DatasetError(f"{path}: rows [{row_start}, {row_end}) requested but the file holds {len(offsets)}")
            yield from tfrecord.iter_records(handle, path, int(offsets[row_start]), row_end - row_start, max_record_bytes)
    finally:
        if open_files is None:
            files.close()
