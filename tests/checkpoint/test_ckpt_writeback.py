"""Early writeback of local parts (dtruntime/checkpoint/writeback.py)."""

from __future__ import annotations

import os

import pytest

from dtruntime.checkpoint import writeback
from dtruntime.checkpoint.storage import LocalStorage
from dtruntime.checkpoint.writeback import WRITEBACK_EVERY, EarlyWriteback


def write_through(path, pieces) -> EarlyWriteback:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        out = EarlyWriteback(fd)
        for piece in pieces:
            out.write(piece)
        os.fsync(fd)
    finally:
        os.close(fd)
    return out


def test_every_byte_is_written_and_writeback_is_started_for_contiguous_ranges_from_zero(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(writeback, "_sync_file_range", lambda fd, offset, nbytes, flags: started.append((offset, nbytes)) or 0)
    pieces = [os.urandom(3 << 20), os.urandom(WRITEBACK_EVERY + 5), b"", os.urandom(WRITEBACK_EVERY * 2 + 7)]
    out = write_through(tmp_path / "part", pieces)
    data = b"".join(pieces)
    assert (tmp_path / "part").read_bytes() == data
    assert out.written == len(data)
    assert started[0][0] == 0
    assert all(a[0] + a[1] == b[0] for a, b in zip(started, started[1:]))  # contiguous, in order
    assert all(nbytes >= WRITEBACK_EVERY for _, nbytes in started)
    assert started[-1][0] + started[-1][1] == out.started <= len(data)
    assert len(data) - out.started < WRITEBACK_EVERY  # only the tail is left to the fsync


@pytest.mark.parametrize("available", [False, True], ids=["no-sync-file-range", "failing-sync-file-range"])
def test_writes_go_on_where_sync_file_range_is_missing_or_fails(tmp_path, monkeypatch, available):
    calls = []

    def failing(fd, offset, nbytes, flags):
        calls.append(offset)
        return -1

    monkeypatch.setattr(writeback, "_sync_file_range", failing if available else None)
    data = os.urandom(WRITEBACK_EVERY * 3)
    write_through(tmp_path / "part", [data])
    assert (tmp_path / "part").read_bytes() == data
    assert calls == ([0] if available else [])  # a failure stops the calls for that file


def test_local_parts_written_with_early_writeback_read_back_and_verify(tmp_path):
    storage = LocalStorage(str(tmp_path))
    data = os.urandom(WRITEBACK_EVERY * 2 + 123)
    key, size, checksum = storage.write_part_as("step-1", lambda crc: f"step-1/part-{crc:08x}", [data[:1000], data[1000:]])
    buffer, read_checksum = storage.read_buffer(key)
    assert size == len(data) and read_checksum == checksum and bytes(buffer) == data
    storage.write_part("step-2/part", data)
    assert storage.read("step-2/part") == data
