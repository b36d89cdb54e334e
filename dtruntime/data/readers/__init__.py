"""Shard readers: one module per format, and :func:`read_slice` to dispatch between them.

Parquet and CSV yield ``pyarrow.RecordBatch`` objects holding exactly the requested rows;
TFRecord yields each record's bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ...errors import DatasetError
from . import csv, parquet, tfrecord

__all__ = ["csv", "parquet", "read_slice", "tfrecord"]


def read_slice(
    fs: Any,
    format: str,
    path: str,
    row_start: int,
    row_end: int,
    *,
    columns: Sequence[str] | None = None,
    max_record_bytes: int = tfrecord.DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[Any]:
    """Yield rows ``[row_start, row_end)`` of one file (batches for tables, bytes for TFRecord)."""
    if row_end <= row_start:
        return
    if format == "parquet":
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as handle:
            table = parquet.read_rows(pq.ParquetFile(handle), row_start, row_end, columns)
        yield from table.to_batches()
    elif format == "csv":
        with fs.open(path, "rb") as handle:
            for batch in csv.iter_row_batches(handle, row_start, row_end):
                yield batch.select(list(columns)) if columns is not None else batch
    elif format == "tfrecord":
        from ..files import tfrecord_offsets

        offsets = tfrecord_offsets(fs, path, max_record_bytes)
        if row_end > len(offsets):
            raise DatasetError(f"{path}: rows [{row_start}, {row_end}) requested but the file holds {len(offsets)}")
        with fs.open(path, "rb") as handle:
            yield from tfrecord.iter_records(handle, path, int(offsets[row_start]), row_end - row_start, max_record_bytes)
    else:
        raise DatasetError(f"unknown format {format!r}")
