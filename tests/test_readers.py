"""Readers: exact parquet/CSV ranges, TFRecord damage reporting, the prefetching iterator."""

from __future__ import annotations

import gc
import io
import struct
import threading
import time

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from .datasets_helpers import memory_root, write_csv_files, write_parquet_files  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st

from dtruntime.data.prefetch import PrefetchIterator, make_shard_dataset
from dtruntime.data.readers import parquet, read_slice, tfrecord
from dtruntime.data.readers.tfrecord import CorruptedRecordError, TruncatedRecordError
from dtruntime.errors import DatasetError

# ----------------------------------------------------------------------------- parquet

ROWS = 1000
GROUP_SIZES = [1, 64, 100, 999]


@pytest.fixture(scope="module")
def parquet_buffers():
    buffers = {}
    for group in GROUP_SIZES:
        sink = io.BytesIO()
        pq.write_table(pa.table({"x": pa.array(range(ROWS), pa.int64())}), sink, row_group_size=group)
        buffers[group] = sink.getvalue()
    return buffers


class CountingParquetFile(pq.ParquetFile):
    """Records which row groups are decoded (a spy; the reading itself is real)."""

    def read_row_groups(self, row_groups, *args, **kwargs):
        self.decoded = list(row_groups)
        return super().read_row_groups(row_groups, *args, **kwargs)


@settings(max_examples=80, deadline=None)
@given(group=st.sampled_from(GROUP_SIZES), start=st.integers(0, ROWS), length=st.integers(0, ROWS))
def test_parquet_range_is_exact_and_reads_only_overlapping_groups(parquet_buffers, group, start, length):
    end = min(ROWS, start + length)
    handle = CountingParquetFile(io.BytesIO(parquet_buffers[group]))
    table = parquet.read_rows(handle, start, end)
    assert table.column("x").to_pylist() == list(range(start, end))
    if end > start:
        assert handle.decoded == list(range(start // group, (end - 1) // group + 1))


def test_parquet_range_outside_file_is_an_error(parquet_buffers):
    with pytest.raises(DatasetError, match="outside the file's 1000 rows"):
        parquet.read_rows(pq.ParquetFile(io.BytesIO(parquet_buffers[64])), 10, 1001)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_read_slice_on_local_and_memory_files(tmp_path, memory_root, where):
    root = str(tmp_path) if where == "local" else memory_root
    (path,) = write_parquet_files(root, [300], row_group_size=32)
    fs, _ = fsspec.core.url_to_fs(root)
    batches = list(read_slice(fs, "parquet", path, 31, 97, columns=["x"]))
    assert [v for b in batches for v in b.column("x").to_pylist()] == list(range(31, 97))
    assert batches[0].schema.names == ["x"]


@pytest.mark.parametrize("start, end", [(0, 0), (0, 1), (5, 17), (0, 40), (39, 40)])
def test_csv_ranges_are_exact_even_with_quoted_newlines(memory_root, start, end):
    (path,) = write_csv_files(memory_root, [40])
    fs, _ = fsspec.core.url_to_fs(memory_root)
    batches = list(read_slice(fs, "csv", path, start, end))
    assert [v for b in batches for v in b.column("x").to_pylist()] == list(range(start, end))
    assert all("line\nbreak" in t for b in batches for t in b.column("text").to_pylist())


# ----------------------------------------------------------------------------- tfrecord

RECORDS = [b"", b"a", b"hello world", bytes(range(40)), b"z" * 7]


def tfrecord_bytes() -> tuple[bytes, list[int]]:
    buffer = io.BytesIO()
    starts = []
    for record in RECORDS:
        starts.append(buffer.tell())
        tfrecord.write_records(buffer, [record])
    return buffer.getvalue(), starts


def read_all(data: bytes, count: int | None = None) -> list[bytes]:
    return list(tfrecord.iter_records(io.BytesIO(data), "f.tfrecord", count=count))


def record_start(starts: list[int], position: int) -> int:
    return max(s for s in starts if s <= position)


def test_tfrecord_roundtrip_and_index():
    data, starts = tfrecord_bytes()
    assert read_all(data) == RECORDS
    assert tfrecord.scan_offsets(io.BytesIO(data), "f", len(data)).tolist() == starts
    # Matches TensorFlow's masked CRC of the empty string.
    assert tfrecord.masked_crc32c(b"") == 0xA282EAD8


def test_every_single_bit_flip_is_reported_with_its_record_offset():
    data, starts = tfrecord_bytes()
    for position in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[position] ^= 1 << bit
            with pytest.raises(CorruptedRecordError) as caught:
                read_all(bytes(damaged))
            expected = record_start(starts, position)
            assert caught.value.offset == expected
            assert f"corrupted record at offset {expected}" in str(caught.value)


def test_every_truncation_is_reported_with_its_record_offset():
    data, starts = tfrecord_bytes()
    ends = starts[1:] + [len(data)]
    for cut in range(len(data)):
        short = data[:cut]
        if cut in starts:  # a record boundary: a clean end, unless more records were promised
            assert read_all(short) == RECORDS[: starts.index(cut)]
            with pytest.raises(TruncatedRecordError, match=f"truncated record at offset {cut}"):
                read_all(short, count=len(RECORDS))
            continue
        expected = record_start(starts, cut)
        assert expected < cut < ends[starts.index(expected)]
        with pytest.raises(TruncatedRecordError, match=f"truncated record at offset {expected}") as caught:
            read_all(short)
        assert caught.value.offset == expected
        with pytest.raises(TruncatedRecordError) as scanned:
            tfrecord.scan_offsets(io.BytesIO(short), "f", len(short))
        assert scanned.value.offset == expected


def test_record_length_is_bounded():
    length = struct.pack("<Q", 10**12)
    header = length + struct.pack("<I", tfrecord.masked_crc32c(length))
    data, _ = tfrecord_bytes()
    with pytest.raises(CorruptedRecordError, match=f"offset {len(data)}.*exceeds max_record_bytes"):
        read_all(data + header + b"x" * 100)


def test_tfrecord_errors_are_dataset_errors():
    assert issubclass(CorruptedRecordError, DatasetError) and issubclass(TruncatedRecordError, DatasetError)


# ----------------------------------------------------------------------------- prefetching


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def test_prefetch_yields_everything_in_order():
    for prefetch in (0, 1, 2, 5):
        iterator = PrefetchIterator(range(20), lambda t: [t * 10, t * 10 + 1], prefetch)
        assert list(iterator) == [v for t in range(20) for v in (t * 10, t * 10 + 1)]
        assert iterator.thread is None if prefetch == 0 else wait_for(lambda: not iterator.thread.is_alive())


def test_prefetch_memory_is_bounded():
    prefetch = 2
    consumed = 0
    worst = 0
    lock = threading.Lock()

    def load(task):
        nonlocal worst
        with lock:
            worst = max(worst, task - consumed)  # records loaded ahead of the consumer
        return [task]

    iterator = PrefetchIterator(range(50), load, prefetch)
    for value in iterator:
        assert wait_for(lambda: iterator._queue.full() or value >= 50 - prefetch - 1)
        with lock:
            consumed = value + 1
    # queue (prefetch) + the one being put; the consumer's current one is already counted.
    assert worst <= prefetch + 1


def test_prefetch_reraises_loader_errors_in_the_consumer():
    def load(task):
        if task == 3:
            raise DatasetError("corrupted record at offset 42 in f")
        return [task]

    iterator = PrefetchIterator(range(10), load, 2)
    assert [next(iterator) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(DatasetError, match="offset 42"):
        next(iterator)
    assert wait_for(lambda: not iterator.thread.is_alive())
    with pytest.raises(StopIteration):
        next(iterator)


def test_close_stops_the_thread_while_it_waits_on_a_full_queue():
    iterator = PrefetchIterator(range(10_000), lambda t: [t], 1)
    next(iterator)
    thread = iterator.thread
    assert wait_for(lambda: iterator._queue.full())
    iterator.close()
    assert not thread.is_alive()
    with pytest.raises(StopIteration):
        next(iterator)


def test_dropping_the_iterator_stops_the_thread():
    iterator = PrefetchIterator(range(10_000), lambda t: [t], 2)
    next(iterator)
    thread = iterator.thread
    del iterator
    gc.collect()
    assert wait_for(lambda: not thread.is_alive())


def test_prefetch_rejects_bad_depth():
    with pytest.raises(DatasetError, match="prefetch_shards"):
        PrefetchIterator([], lambda t: [], -1)


def test_shard_dataset_is_a_torch_iterable_dataset(tmp_path):
    torch = pytest.importorskip("torch")
    from dtruntime import DatasetRegistry

    write_parquet_files(str(tmp_path), [100, 50], row_group_size=16)
    registry = DatasetRegistry(rank=0, world_size=2)
    registry.register("d", str(tmp_path), shard_size=30)
    dataset = registry.open_shard("d", 1, 0, columns=["x"])
    assert isinstance(dataset, torch.utils.data.IterableDataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, collate_fn=lambda b: b.column("x").to_pylist())
    values = [v for batch in loader for v in batch]
    records = registry.get_assignment("d", 1, 0)
    assert values == [i for r in records for i in r.sample_order()]
    assert len(values) == 75


def test_make_shard_dataset_rejects_bad_prefetch(tmp_path):
    with pytest.raises(DatasetError, match="prefetch_shards"):
        make_shard_dataset(None, "parquet", [], prefetch_shards=-2)


def test_unreadable_file_is_named(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    fs = fsspec.filesystem("file")
    with pytest.raises(DatasetError, match="bad.parquet"):
        list(read_slice(fs, "parquet", str(tmp_path / "bad.parquet"), 0, 1))
    with pytest.raises(DatasetError, match="unknown format 'orc'"):
        list(read_slice(fs, "orc", str(tmp_path / "bad.parquet"), 0, 1))


def test_dataloader_workers_split_records_without_duplicates(tmp_path):
    torch = pytest.importorskip("torch")
    from dtruntime import DatasetRegistry

    write_parquet_files(str(tmp_path), [120, 80], row_group_size=16)
    registry = DatasetRegistry(rank=0, world_size=1)
    registry.register("d", str(tmp_path), shard_size=25, shuffle=True, seed=3)
    loader = torch.utils.data.DataLoader(
        registry.open_shard("d", 0, 1, columns=["x"]),
        batch_size=None,
        num_workers=2,
        collate_fn=lambda b: b.column("x").to_pylist(),
        timeout=60,
    )
    values = [v for batch in loader for v in batch]
    assert sorted(values) == list(range(200))
