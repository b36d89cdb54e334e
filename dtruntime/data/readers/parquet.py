"""Parquet ranges: read only the row groups a row range overlaps, return exactly those rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import DatasetError


def row_group_bounds(metadata: Any) -> np.ndarray:
    """``bounds[i]`` is the first row of row group ``i``; ``bounds[-1]`` the file's row count."""
    counts = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    return np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))


def read_rows(
    parquet_file: Any, row_start: int, row_end: int, columns: Sequence[str] | None = None
) -> Any:
    """Rows ``[row_start, row_end)`` of an open ``pyarrow.parquet.ParquetFile`` as a Table.

    Only the row groups overlapping the range are decoded; the result is sliced to exactly
    the requested rows (possibly zero).
    """
    bounds = row_group_bounds(parquet_file.metadata)
    total = int(bounds[-1])
    if not 0 <= row_start <= row_end <= total:
        raise DatasetError(f"row range [{row_start}, {row_end}) is outside the file's {total} rows")
    if row_start == row_end:
        return parquet_file.schema_arrow.empty_table() if columns is None else parquet_file.schema_arrow.empty_table().select(list(columns))
    first = int(np.searchsorted(bounds, row_start, side="right")) - 1
    last = int(np.searchsorted(bounds, row_end, side="left"))  # exclusive
    groups = list(range(first, last))
    table = parquet_file.read_row_groups(groups, columns=list(columns) if columns is not None else None)
    return table.slice(row_start - int(bounds[first]), row_end - row_start)
