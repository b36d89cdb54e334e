"""CRC-32C checksums of checkpoint bytes (pure: no IO).

Why CRC-32C (google-crc32c) rather than xxhash: a CRC detects *every* error burst of
32 bits or less, so every single-byte flip in a part or manifest is detected with
certainty, not just with high probability; it runs in hardware (SSE4.2 / ARMv8 CRC) at
about 10 GB/s, as fast as xxh3 on this machine; and it is the checksum S3 and GCS compute
natively (``x-amz-checksum-crc32c``), so a later version can have the store verify uploads.
"""

from __future__ import annotations

import google_crc32c

Buffer = bytes | bytearray | memoryview

# google-crc32c accepts only read-only ``bytes``; other buffers go through in slices of
# this size so checksumming never doubles peak memory.
_SLICE = 8 << 20


def crc32c(data: Buffer) -> int:
    """CRC-32C of ``data`` as an unsigned 32-bit int (0 for empty input)."""
    if isinstance(data, bytes):
        return google_crc32c.value(data)
    view = memoryview(data).cast("B")
    crc = 0
    for start in range(0, len(view), _SLICE):
        crc = google_crc32c.extend(crc, bytes(view[start : start + _SLICE]))
    return crc


def format_checksum(value: int) -> str:
    """The canonical spelling used in names and manifests: 8 lowercase hex digits."""
    return f"{value:08x}"
