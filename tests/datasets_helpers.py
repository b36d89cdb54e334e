"""Fixtures and writers for the small test datasets: column ``x`` (or the record bytes) is the
global sample index. (Kept out of conftest.py so it cannot clash with other suites' fixtures.)"""

from __future__ import annotations

import io
import uuid

import fsspec
import pytest


from dtruntime.data.readers.tfrecord import write_records


def write_parquet_files(root: str, rows_per_file: list[int], row_group_size: int = 64) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, base = fsspec.core.url_to_fs(root)
    fs.makedirs(base, exist_ok=True)
    paths, start = [], 0
    for i, rows in enumerate(rows_per_file):
        path = f"{base}/part-{i:03d}.parquet"
        buffer = io.BytesIO()
        table = pa.table({"x": pa.array(range(start, start + rows), pa.int64()), "s": [f"row{start + j}" for j in range(rows)]})
        pq.write_table(table, buffer, row_group_size=row_group_size)
        fs.pipe_file(path, buffer.getvalue())
        paths.append(path)
        start += rows
    return paths


def write_csv_files(root: str, rows_per_file: list[int]) -> list[str]:
    fs, base = fsspec.core.url_to_fs(root)
    fs.makedirs(base, exist_ok=True)
    paths, start = [], 0
    for i, rows in enumerate(rows_per_file):
        lines = ["x,text"] + [f'{start + j},"line\nbreak {start + j}"' for j in range(rows)]
        path = f"{base}/part-{i:03d}.csv"
        fs.pipe_file(path, ("\n".join(lines) + "\n").encode())
        paths.append(path)
        start += rows
    return paths


def write_tfrecord_files(root: str, rows_per_file: list[int]) -> list[str]:
    fs, base = fsspec.core.url_to_fs(root)
    fs.makedirs(base, exist_ok=True)
    paths, start = [], 0
    for i, rows in enumerate(rows_per_file):
        buffer = io.BytesIO()
        write_records(buffer, (b"record-%d" % (start + j) for j in range(rows)))
        path = f"{base}/part-{i:03d}.tfrecord"
        fs.pipe_file(path, buffer.getvalue())
        paths.append(path)
        start += rows
    return paths


@pytest.fixture
def memory_root():
    """A fresh ``memory://`` directory, removed afterwards."""
    root = f"memory://dtruntime-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.mkdir(root)
    yield root
    if fs.exists(root):
        fs.rm(root, recursive=True)
