"""Read the checkpoints of a store without joining a job (``dtruntime checkpoints PATH``).

Uses the checkpoint package's own pieces: :func:`open_storage` for the URL,
:func:`scan_listing` for committed and in-flight steps, :func:`decode_manifest` (which
checks the manifest's CRC and every field) and, with ``verify``, :func:`verify_part` and
:func:`decompress` on every part, which is what ``CheckpointManager.load`` does. Read only:
nothing is written, retried or deleted; a step that fails is reported, never skipped in
silence.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint import layout
from ..checkpoint.commit import scan_listing
from ..checkpoint.compression import decompress
from ..checkpoint.manifest import decode_manifest, verify_part
from ..checkpoint.storage import LocalStorage, Storage, open_storage
from ..errors import CheckpointError, ConfigError
from .errors import UnreachableError, UsageError


@dataclass
class StepReport:
    """One committed step. ``problem`` is None when it decoded (and, if checked, verified)."""

    step: int
    world_size: int | None = None
    stored_bytes: int | None = None
    codecs: tuple[str, ...] = ()
    created_unix: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    verified: bool = False
    problem: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "world_size": self.world_size, "stored_bytes": self.stored_bytes,
                "codecs": list(self.codecs), "created_unix": self.created_unix, "metadata": dict(self.metadata),
                "verified": self.verified, "ok": self.problem is None, "problem": self.problem}


@dataclass
class StoreReport:
    url: str
    committed: list[StepReport]
    in_flight: dict[int, int]  # step -> parts found

    @property
    def ok(self) -> bool:
        return all(step.problem is None for step in self.committed)


def open_store(path: str, storage_options: Mapping[str, Any]) -> Storage:
    """The storage of ``path``; UsageError for a bad URL or a local directory that does not exist."""
    try:
        storage = open_storage(path, None, storage_options)
    except ConfigError as exc:
        raise UsageError(f"cannot open {path!r}: {exc}") from None
    if isinstance(storage, LocalStorage) and not os.path.isdir(storage.root):
        raise UsageError(f"{storage.root} is not a directory")
    return storage


def inspect_store(storage: Storage, verify: bool) -> StoreReport:
    try:
        view = scan_listing(storage.list_files())
    except OSError as exc:
        raise UnreachableError(f"cannot list {storage.url}: {exc}") from None
    committed = [_inspect_step(storage, step, verify) for step in view.committed]
    in_flight = {step: len(parts) for step, parts in view.in_flight.items()}
    return StoreReport(storage.url, committed, in_flight)


def _inspect_step(storage: Storage, step: int, verify: bool) -> StepReport:
    report = StepReport(step)
    key = layout.manifest_key(step)
    source = storage.describe(key)
    try:
        manifest = decode_manifest(storage.read(key), expected_step=step, source=source)
    except FileNotFoundError:
        report.problem = f"{source} vanished while listing (deleted by retention?)"
        return report
    except OSError as exc:
        report.problem = f"cannot read {source}: {exc}"
        return report
    except CheckpointError as exc:
        report.problem = str(exc)
        return report
    report.world_size = manifest.world_size
    report.stored_bytes = manifest.total_size
    report.codecs = tuple(sorted({p.codec for p in manifest.parts}))
    report.created_unix = manifest.created_unix
    report.metadata = manifest.metadata
    if not verify:
        return report
    for record in manifest.parts:
        part = layout.part_key(step, record.rank, record.codec, record.checksum)
        where = storage.describe(part)
        try:
            stored = storage.read(part)
            verify_part(step, record, stored, where)
            decompress(record.codec, stored)
        except FileNotFoundError:
            report.problem = f"checkpoint step {step} rank {record.rank}: {where} is missing"
        except OSError as exc:
            report.problem = f"checkpoint step {step} rank {record.rank}: cannot read {where}: {exc}"
        except CheckpointError as exc:
            report.problem = str(exc) if f"step {step}" in str(exc) else f"checkpoint step {step} rank {record.rank}: {exc}"
        if report.problem is not None:
            return report
    report.verified = True
    return report
