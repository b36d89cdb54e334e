"""CSV through pyarrow's streaming reader: counting rows and reading a row range.

The first line is the header. Rows are counted by parsing (not by counting newlines) so that
quoted fields containing newlines are counted correctly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, BinaryIO


def _open(handle: BinaryIO) -> Any:
    import pyarrow.csv as pacsv

    return pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=1 << 20))


def count_rows(handle: BinaryIO) -> int:
    return sum(batch.num_rows for batch in _open(handle))


def iter_row_batches(handle: BinaryIO, row_start: int, row_end: int) -> Iterator[Any]:
    """Record batches holding exactly rows ``[row_start, row_end)`` (data rows, header excluded)."""
    position = 0
    for batch in _open(handle):
        if position >= row_end:
            return
        batch_end = position + batch.num_rows
        if batch_end > row_start:
            lo = max(row_start - position, 0)
            hi = min(row_end, batch_end) - position
            yield batch.slice(lo, hi - lo)
        position = batch_end
