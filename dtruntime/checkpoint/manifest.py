"""Manifest encoding, decoding and part verification (pure: no IO).

A manifest lists every part of one step: ``rank``, ``file``, stored ``size``, ``crc32c``
of the stored bytes and ``codec``, plus ``world_size``, ``created_unix`` and the user's
JSON metadata. Writing it is the commit of the step.

Wire format: a JSON document (sorted keys, UTF-8, readable with ``cat``) followed by a
fixed-length trailer ``\\n#crc32c=<8 lowercase hex>\\n`` covering the JSON bytes. So every
single-byte change of a manifest (in the JSON or the trailer) and every truncation is
detected: the CRC catches any change of the body, the trailer must match exactly
(lowercase only, so a case flip of a hex digit is also caught), and a truncated file
loses or shifts its trailer. Decoding then checks every field (types, ranges, ranks
exactly ``0..world_size-1``, file names consistent with the other fields) and raises
:class:`CheckpointError` naming the manifest and the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError
from . import layout
from .compression import CODEC_NAMES
from .integrity import Buffer, crc32c, format_checksum

FORMAT = "dtruntime-checkpoint"
VERSION = 1

_TRAILER = re.compile(rb"\n#crc32c=([0-9a-f]{8})\n")
_TRAILER_LEN = len(b"\n#crc32c=") + 8 + 1
_TOP_KEYS = {"format", "version", "step", "world_size", "created_unix", "parts", "metadata"}
_PART_KEYS = {"rank", "file", "size", "crc32c", "codec"}


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One rank's stored part: ``size`` and ``checksum`` describe the bytes as stored."""

    rank: int
    size: int
    checksum: int
    codec: str

    @property
    def file(self) -> str:
        return layout.part_name(self.rank, self.codec, self.checksum)


@dataclass(frozen=True)
class Manifest:
    """A committed step. Invariant: ``parts[i].rank == i`` for ``i < world_size``."""

    step: int
    world_size: int
    parts: tuple[PartRecord, ...]
    created_unix: float
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"manifest of step {self.step}"
        layout.validate_step(self.step)
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise CheckpointError(f"{where}: world_size must be a positive integer, not {self.world_size!r}")
        if [p.rank for p in self.parts] != list(range(self.world_size)):
            raise CheckpointError(f"{where}: parts must be ranks 0..{self.world_size - 1} in order")
        if not isinstance(self.created_unix, (int, float)) or not math.isfinite(self.created_unix):
            raise CheckpointError(f"{where}: created_unix must be a finite number")
        if not isinstance(self.metadata, Mapping):
            raise CheckpointError(f"{where}: metadata must be a mapping")

    @property
    def total_size(self) -> int:
        return sum(p.size for p in self.parts)


def check_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``metadata`` as a dict if it is JSON-encodable; CheckpointError naming the bad key."""
    for key, value in metadata.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"metadata {key!r} is not JSON-encodable: {exc}") from None
    return dict(metadata)


def encode_manifest(manifest: Manifest) -> bytes:
    document = {
        "format": FORMAT,
        "version": VERSION,
        "step": manifest.step,
        "world_size": manifest.world_size,
        "created_unix": manifest.created_unix,
        "parts": [
            {"rank": p.rank, "file": p.file, "size": p.size, "crc32c": format_checksum(p.checksum), "codec": p.codec}
            for p in manifest.parts
        ],
        "metadata": dict(manifest.metadata),
    }
    body = json.dumps(document, sort_keys=True, indent=1, allow_nan=False).encode("utf-8")
    return body + b"\n#crc32c=" + format_checksum(crc32c(body)).encode("ascii") + b"\n"


def decode_manifest(data: bytes, *, expected_step: int | None = None, source: str = "manifest") -> Manifest:
    """Parse and fully validate manifest bytes; CheckpointError naming ``source`` otherwise."""
    if len(data) < _TRAILER_LEN:
        raise CheckpointError(f"{source}: truncated ({len(data)} bytes)")
    body, trailer = data[:-_TRAILER_LEN], data[-_TRAILER_LEN:]
    match = _TRAILER.fullmatch(trailer)
    if not match:
        raise CheckpointError(f"{source}: missing or damaged checksum trailer (truncated or corrupt)")
    if format_checksum(crc32c(body)) != match.group(1).decode("ascii"):
        raise CheckpointError(f"{source}: checksum mismatch (corrupt manifest)")
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{source}: not valid JSON: {exc}") from None
    manifest = _from_document(document, source)
    if expected_step is not None and manifest.step != expected_step:
        raise CheckpointError(f"{source}: records step {manifest.step}, expected {expected_step}")
    return manifest


def verify_part(step: int, record: PartRecord, data: Buffer, source: str) -> None:
    """Raise CheckpointError naming step, rank and ``source`` unless size and CRC match."""
    if len(data) != record.size:
        verify_checksum(step, record, len(data), 0, source)
    verify_checksum(step, record, len(data), crc32c(data), source)


def verify_checksum(step: int, record: PartRecord, size: int, checksum: int, source: str) -> None:
    """:func:`verify_part` for a part already read and checksummed (``size`` bytes, CRC ``checksum``)."""
    if size != record.size:
        raise CheckpointError(
            f"checkpoint step {step} rank {record.rank}: {source} has {size} bytes, "
            f"manifest says {record.size} (truncated or corrupt)"
        )
    if checksum != record.checksum:
        raise CheckpointError(
            f"checkpoint step {step} rank {record.rank}: {source} crc32c {format_checksum(checksum)} "
            f"!= manifest {format_checksum(record.checksum)} (corrupt)"
        )


def _from_document(document: Any, source: str) -> Manifest:
    def fail(problem: str) -> CheckpointError:
        return CheckpointError(f"{source}: {problem}")

    if not isinstance(document, dict) or set(document) != _TOP_KEYS:
        raise fail(f"must be an object with keys {sorted(_TOP_KEYS)}")
    if document["format"] != FORMAT:
        raise fail(f"format is {document['format']!r}, expected {FORMAT!r}")
    if document["version"] != VERSION or isinstance(document["version"], bool):
        raise fail(f"unsupported version {document['version']!r} (this reader knows {VERSION})")
    if not isinstance(document["parts"], list):
        raise fail("parts must be a list")
    parts = tuple(_part_from_entry(entry, index, fail) for index, entry in enumerate(document["parts"]))
    try:
        return Manifest(
            step=document["step"],
            world_size=document["world_size"],
            parts=parts,
            created_unix=document["created_unix"],
            metadata=document["metadata"],
        )
    except CheckpointError as exc:
        raise fail(str(exc)) from None


def _part_from_entry(entry: Any, index: int, fail: Callable[[str], CheckpointError]) -> PartRecord:
    if not isinstance(entry, dict) or set(entry) != _PART_KEYS:
        raise fail(f"parts[{index}] must be an object with keys {sorted(_PART_KEYS)}")
    size, checksum, codec = entry["size"], entry["crc32c"], entry["codec"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise fail(f"parts[{index}].size must be an integer >= 0, not {size!r}")
    if not isinstance(checksum, str) or not re.fullmatch(r"[0-9a-f]{8}", checksum):
        raise fail(f"parts[{index}].crc32c must be 8 lowercase hex digits, not {checksum!r}")
    if codec not in CODEC_NAMES:
        raise fail(f"parts[{index}].codec must be one of {', '.join(CODEC_NAMES)}, not {codec!r}")
    try:
        record = PartRecord(rank=layout.validate_rank(entry["rank"]), size=size, checksum=int(checksum, 16), codec=codec)
    except CheckpointError as exc:
        raise fail(f"parts[{index}]: {exc}") from None
    if entry["file"] != record.file:
        raise fail(f"parts[{index}].file {entry['file']!r} does not match its fields ({record.file!r})")
    return record
