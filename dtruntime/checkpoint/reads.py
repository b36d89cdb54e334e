"""Verified reads of a checkpoint root: the listing, manifests, parts, whole steps.

Shared by :class:`~.manager.CheckpointManager`, the multi-rank leader and DCP's reader,
so a missing, unreadable or damaged object gets one message wherever it is read:

* the listing fails: CheckpointError "cannot list checkpoints under <url>";
* a manifest is absent: :class:`CheckpointNotFoundError` (also a ``FileNotFoundError``)
  "checkpoint step S is not committed under <url>";
* a part is absent: CheckpointError "checkpoint step S rank R: <file> is missing";
* any other read error, a size or CRC-32C that does not match the manifest, bytes that do
  not decode or decompress: CheckpointError naming the step (and rank) and the file.

No byte of a part is returned before it verified against its manifest record. Nothing
here writes or deletes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import CheckpointError, CheckpointNotFoundError
from . import layout
from .commit import StorageView, scan_listing
from .compression import decompress
from .manifest import Manifest, PartRecord, decode_manifest, verify_checksum, verify_part
from .storage import Storage

log = logging.getLogger("dtruntime.checkpoint")

T = TypeVar("T")


def scan(storage: Storage) -> StorageView:
    """The committed and in-flight steps storage lists now."""
    try:
        return scan_listing(storage.list_files())
    except OSError as exc:
        raise CheckpointError(f"cannot list checkpoints under {storage.url}: {exc}") from exc


def read_key(read: Callable[[str], T], storage: Storage, key: str, context: str,
             missing: CheckpointError | None = None) -> T:
    """``read(key)`` (a read method of ``storage``), its OSErrors as CheckpointErrors.

    ``context`` prefixes the messages ("checkpoint step 3 rank 1: "). A missing key raises
    ``missing`` when given, else "<context><file> is missing".
    """
    source = storage.describe(key)
    try:
        return read(key)
    except FileNotFoundError:
        raise (missing or CheckpointError(f"{context}{source} is missing")) from None
    except OSError as exc:
        raise CheckpointError(f"{context}cannot read {source}: {exc}") from exc


def read_manifest(storage: Storage, step: int) -> Manifest:
    """The decoded manifest of ``step``; CheckpointNotFoundError when it is not committed."""
    key = layout.manifest_key(step)
    absent = CheckpointNotFoundError(f"checkpoint step {step} is not committed under {storage.url}")
    raw = read_key(storage.read, storage, key, "", missing=absent)
    return decode_manifest(raw, expected_step=step, source=storage.describe(key))


def read_stored(storage: Storage, manifest: Manifest, record: PartRecord) -> tuple[bytes, str]:
    """The stored (possibly compressed) bytes of ``record``'s part once they verify, and their file."""
    key = layout.part_key(manifest.step, record.rank, record.codec, record.checksum)
    stored = read_key(storage.read, storage, key, f"checkpoint step {manifest.step} rank {record.rank}: ")
    source = storage.describe(key)
    verify_part(manifest.step, record, stored, source)
    return stored, source


def read_part(storage: Storage, manifest: Manifest, record: PartRecord) -> bytes:
    """The part of ``record``, verified and decompressed."""
    stored, source = read_stored(storage, manifest, record)
    try:
        return decompress(record.codec, stored)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint step {manifest.step} rank {record.rank}: {source}: {exc}") from exc


def read_part_buffer(storage: Storage, manifest: Manifest, record: PartRecord) -> Any:
    """The part of ``record`` in an aligned writable numpy ``uint8`` array, verified.

    An uncompressed part is read into it directly and checksummed while it is read (one
    pass, no copy); a compressed one is decompressed, then copied in.
    """
    import numpy as np

    from .storage import aligned_empty

    if record.codec != "none":
        data = read_part(storage, manifest, record)
        buffer = aligned_empty(len(data))
        buffer[:] = np.frombuffer(data, dtype=np.uint8)
        return buffer
    key = layout.part_key(manifest.step, record.rank, record.codec, record.checksum)
    context = f"checkpoint step {manifest.step} rank {record.rank}: "
    buffer, checksum = read_key(storage.read_buffer, storage, key, context)
    verify_checksum(manifest.step, record, len(buffer), checksum, storage.describe(key))
    return buffer


def read_step(storage: Storage, step: int, rank: int | None, verify_all: bool, as_buffer: bool = False) -> Any:
    """Read ``step``'s manifest and verify its parts: ``rank``'s, and every other one too
    when ``verify_all`` (read and dropped, one at a time).

    Returns ``rank``'s decompressed bytes (empty when ``rank`` is None), as an aligned
    writable numpy ``uint8`` array when ``as_buffer``. A manifest without ``rank``
    raises CheckpointError.
    """
    manifest = read_manifest(storage, step)
    records = {record.rank: record for record in manifest.parts}
    if rank is not None and rank not in records:
        raise CheckpointError(f"checkpoint step {step} has no part of rank {rank} (world of {manifest.world_size})")
    if verify_all:
        for record in manifest.parts:
            if record.rank != rank:
                read_stored(storage, manifest, record)
    if rank is None:
        return b""
    if as_buffer:
        return read_part_buffer(storage, manifest, records[rank])
    return read_part(storage, manifest, records[rank])


def newest_that_verifies(storage: Storage, read: Callable[[int], T]) -> tuple[int, T]:
    """The newest committed step for which ``read(step)`` succeeds, and what it returned.

    Each newer step whose ``read`` raises CheckpointError is skipped with a WARNING naming
    it and why, so every reader of a root falls back to the same step. Raises
    CheckpointNotFoundError when nothing is committed, CheckpointError naming each
    skipped step when no step reads.
    """
    committed = scan(storage).committed
    if not committed:
        raise CheckpointNotFoundError(f"no committed checkpoint under {storage.url}")
    skipped: list[str] = []
    for step in reversed(committed):
        try:
            value = read(step)
        except CheckpointError as exc:
            log.warning("skipping checkpoint step %d under %s, it does not verify: %s", step, storage.url, exc)
            skipped.append(f"step {step}: {exc}")
            continue
        if skipped:
            log.warning("loading checkpoint step %d under %s, the newest that verifies", step, storage.url)
        return step, value
    raise CheckpointError(f"no committed checkpoint under {storage.url} verifies: {'; '.join(skipped)}")
