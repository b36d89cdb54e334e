"""Part compression: ``none``, ``gzip``, ``zstd`` and the adaptive ``auto`` (pure: no IO).

``auto`` (the default) compresses a sample of the payload with zstd level 1 and keeps
zstd only when the sample shrinks by at least :data:`MIN_SAVING` (10%); it checks the
full result against the same threshold and stores the part uncompressed otherwise.
Float weights barely compress (zstd-1 ratio ~0.92, gzip ~27 MiB/s per core), so paying
for compression there only slows the save. The codec of each part is recorded in its
name and manifest entry, so reading never guesses.
"""

from __future__ import annotations

import gzip

import zstandard

from ..errors import CheckpointError, ConfigError
from .integrity import Buffer

CODEC_NAMES: tuple[str, ...] = ("none", "gzip", "zstd")
SETTINGS: tuple[str, ...] = CODEC_NAMES + ("auto",)
MIN_SAVING = 0.10

ZSTD_LEVEL = 1
GZIP_LEVEL = 1
_SAMPLE_CHUNK = 64 << 10
_SAMPLE_CHUNKS = 8


def validate_setting(setting: str) -> str:
    """Return ``setting`` if it is one of :data:`SETTINGS`, else raise ConfigError."""
    if setting not in SETTINGS:
        raise ConfigError("compression", f"must be one of {', '.join(SETTINGS)}, not {setting!r}")
    return setting


def compress(data: Buffer, setting: str) -> tuple[str, Buffer]:
    """Encode ``data`` according to ``setting``; return ``(codec, stored_bytes)``.

    With ``none`` (or ``auto`` deciding against compression) the input object itself is
    returned, so no copy is made.
    """
    validate_setting(setting)
    if setting == "none" or len(data) == 0:
        return "none", data
    if setting == "gzip":
        return "gzip", gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)
    if setting == "zstd":
        return "zstd", _zstd(data)
    if not worth_compressing(data):
        return "none", data
    packed = _zstd(data)
    if len(packed) > (1 - MIN_SAVING) * len(data):
        return "none", data
    return "zstd", packed


def decompress(codec: str, data: bytes) -> bytes:
    """Inverse of :func:`compress` for a stored part; CheckpointError on undecodable input."""
    try:
        if codec == "none":
            return data
        if codec == "gzip":
            return gzip.decompress(data)
        if codec == "zstd":
            return zstandard.ZstdDecompressor().decompress(data)
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        raise CheckpointError(f"cannot decompress {codec} part: {exc}") from exc
    raise CheckpointError(f"unknown codec {codec!r}")


def worth_compressing(data: Buffer) -> bool:
    """``auto``'s first test: does a sample of ``data`` shrink by at least MIN_SAVING?"""
    return len(data) > 0 and _sample_ratio(data) <= 1 - MIN_SAVING


def _zstd(data: Buffer) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(data)


def _sample_ratio(data: Buffer) -> float:
    """Compressed/original size of up to 8 evenly spread 64 KiB slices of ``data``."""
    view = memoryview(data).cast("B")
    if len(view) <= _SAMPLE_CHUNK * _SAMPLE_CHUNKS:
        sample = bytes(view)
    else:
        stride = (len(view) - _SAMPLE_CHUNK) // (_SAMPLE_CHUNKS - 1)
        sample = b"".join(view[i * stride : i * stride + _SAMPLE_CHUNK] for i in range(_SAMPLE_CHUNKS))
    return len(_zstd(sample)) / len(sample)
