"""TFRecord files: framing, both masked CRC32C checks, bounded record length, exact errors.

A record is framed as::

    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

Reading distinguishes three endings, always naming the byte offset where the bad record
*starts*, so a bit flip or a cut can be located with ``dd``:

* clean end of file: the file ends exactly after a record;
* :class:`TruncatedRecordError` "truncated record at offset N": the file ends inside a record
  (or before the number of records the caller was promised);
* :class:`CorruptedRecordError` "corrupted record at offset N": a CRC does not match, or the
  length exceeds ``max_record_bytes`` (checked only after the length CRC passed, so a flipped
  length bit is reported as a CRC failure rather than attempted as a huge read).

``google-crc32c`` supplies CRC32C (hardware accelerated where available).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import google_crc32c
import numpy as np

from ...errors import DatasetError

__all__ = [
    "CorruptedRecordError",
    "DEFAULT_MAX_RECORD_BYTES",
    "RecordError",
    "TruncatedRecordError",
    "encode_record",
    "iter_records",
    "masked_crc32c",
    "scan_offsets",
    "write_records",
]

DEFAULT_MAX_RECORD_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MASK_DELTA = 0xA282EAD8
_READ_CHUNK = 1 << 20


class RecordError(DatasetError):
    """A TFRecord file is damaged; ``path`` and ``offset`` locate the record."""

    def __init__(self, kind: str, path: str, offset: int, detail: str) -> None:
        super().__init__(f"{kind} record at offset {offset} in {path}: {detail}")
        self.path = path
        self.offset = offset
        self.detail = detail


class TruncatedRecordError(RecordError):
    def __init__(self, path: str, offset: int, detail: str) -> None:
        super().__init__("truncated", path, offset, detail)


class CorruptedRecordError(RecordError):
    def __init__(self, path: str, offset: int, detail: str) -> None:
        super().__init__("corrupted", path, offset, detail)


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC32C: rotate right by 15 and add a constant (mod 2**32)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def encode_record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + _FOOTER.pack(masked_crc32c(data))


def write_records(handle: BinaryIO, records: Iterable[bytes]) -> int:
    """Write ``records`` framed as TFRecords to an open binary file; returns the count."""
    count = 0
    for data in records:
        handle.write(encode_record(bytes(data)))
        count += 1
    return count


def _read_header(handle: BinaryIO, path: str, offset: int, max_record_bytes: int) -> int | None:
    """Return the data length of the record at ``offset``, or None at a clean end of file."""
    header = handle.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise TruncatedRecordError(path, offset, f"file ends after {len(header)} of 12 header bytes")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        raise CorruptedRecordError(path, offset, "length CRC mismatch")
    if length > max_record_bytes:
        raise CorruptedRecordError(path, offset, f"length {length} exceeds max_record_bytes {max_record_bytes}")
    return length


def scan_offsets(
    handle: BinaryIO, path: str, file_size: int, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> np.ndarray:
    """Start offsets of every record, checking headers and sizes but not data CRCs (a count scan).

    Data CRCs are checked when records are read with :func:`iter_records`.
    """
    offsets = []
    offset = 0
    handle.seek(0)
    while True:
        length = _read_header(handle, path, offset, max_record_bytes)
        if length is None:
            break
        end = offset + _HEADER.size + length + _FOOTER.size
        if end > file_size:
            raise TruncatedRecordError(path, offset, f"record needs {end - offset} bytes, file has {file_size - offset}")
        offsets.append(offset)
        offset = end
        handle.seek(offset)
    return np.asarray(offsets, dtype=np.int64)


def iter_records(
    handle: BinaryIO,
    path: str,
    start_offset: int = 0,
    count: int | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[bytes]:
    """Yield up to ``count`` records (all when None) starting at ``start_offset``, checking both
    CRCs. If ``count`` records were promised and the file ends first, that is a truncation."""
    handle.seek(start_offset)
    offset = start_offset
    produced = 0
    while count is None or produced < count:
        length = _read_header(handle, path, offset, max_record_bytes)
        if length is None:
            if count is not None:
                raise TruncatedRecordError(path, offset, f"file ended after {produced} of {count} expected records")
            return
        body = handle.read(length + _FOOTER.size)
        if len(body) < length + _FOOTER.size:
            raise TruncatedRecordError(path, offset, f"file ends {length + 4 - len(body)} bytes short of the record end")
        data = body[:length]
        (data_crc,) = _FOOTER.unpack(body[length:])
        if masked_crc32c(data) != data_crc:
            raise CorruptedRecordError(path, offset, "data CRC mismatch")
        yield data
        produced += 1
        offset += _HEADER.size + length + _FOOTER.size
