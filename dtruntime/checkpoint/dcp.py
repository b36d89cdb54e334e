"""``torch.distributed.checkpoint`` through dtruntime's storage and commit.

    from dtruntime.checkpoint.dcp import DtruntimeStorageReader, DtruntimeStorageWriter
    dcp.save(state, storage_writer=DtruntimeStorageWriter("s3://bucket/ckpt", step=100))
    dcp.load(state, storage_reader=DtruntimeStorageReader("s3://bucket/ckpt"))  # newest

DCP's planners keep doing what they do (deduplication, resharding on load across world
sizes and DTensor/FSDP layouts); these classes only decide where bytes go, in the same
layout as :class:`~dtruntime.checkpoint.CheckpointManager` (so ``list_checkpoints``,
``read_manifest`` and retention see DCP steps too):

* each rank writes all its items as one part, ``step-S/part-<rank>-none-<crc32c>.bin``
  (tensors as raw contiguous bytes, DCP's ``BytesIO`` items as they are: no pickle),
  checksummed as it is written (:meth:`.storage.Storage.write_part_as`), durable at its
  final key when ``write_data`` returns; a rank with nothing to write
  writes an empty part, so every rank ``0..world_size-1`` has one;
* DCP's coordinator rank (``finish``) is the leader: it checks that storage lists every
  rank's part as reported, writes DCP's ``Metadata`` pickle-free (:mod:`.dcp_metadata`)
  as ``step-S/DCP_METADATA-<crc32c>`` (named by its checksum, so a save that races a
  commit of the same step never overwrites the committed step's file), then the
  create-only manifest, whose ``metadata`` names the DCP file, its size and CRC-32C:
  that single create-only write is the commit (no rename, on S3 or anywhere), and ``keep_last_n`` retention runs after it (old steps, and every
  uncommitted step older than this one: an orphan of a save that died);
* loading reads only committed steps (``step=None``: the newest whose manifest and DCP
  metadata verify, resolved on each rank as DCP reads the metadata on each rank; pass
  ``step`` when another job may commit meanwhile), verifies every part it reads against
  the manifest's size and CRC-32C before using a byte of it, and copies each item into
  the tensor DCP's planner resolves.

A step that already exists is refused in ``prepare_local_plan`` (CheckpointError), so no
commit is ever overwritten. Use DCP's ``async_save`` as usual: the writer runs in DCP's
background thread.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Mapping
from torch.futures import Future
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult

from ..config import Config
from ..errors import CheckpointError
from . import layout
from .commit import PartReport, StepCommit, StorageView, recover_step
from .dcp_metadata import ItemLocation, decode_metadata, encode_metadata
from .integrity import crc32c, format_checksum
from .manifest import Manifest
from .publish import publish_manifest, sweep
from .reads import newest_that_verifies, read_key, read_manifest, read_part_buffer, scan
from .retention import validate_keep_last_n
from .storage import Storage, open_storage

#: The key in a manifest's ``metadata`` that marks a DCP step and locates its metadata.
MANIFEST_KEY = "dtruntime.dcp"
DCP_VERSION = "1.0.0"


@dataclass(frozen=True)
class _PartLocation:
    """What a rank's ``WriteResult``s carry to the coordinator besides the item's place."""

    rank: int
    part_size: int
    part_crc32c: int


class DtruntimeStorageWriter(StorageWriter):
    """Write a DCP checkpoint as step ``step`` under ``storage_path`` (a path or fsspec URL).

    ``keep_last_n`` (default: ``[checkpoint] keep_last_n`` from ``config`` or
    :meth:`Config.load`) is applied by the coordinator after its commit.
    ``reset(checkpoint_id)`` (DCP's ``checkpoint_id=``) accepts a step number.
    """

    def __init__(
        self,
        storage_path: str,
        step: int,
        *,
        backend: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        keep_last_n: int | None = None,
        config: Config | None = None,
    ) -> None:
        super().__init__()
        settings = (config if config is not None else Config.load()).checkpoint
        self.keep_last_n = validate_keep_last_n(settings.keep_last_n if keep_last_n is None else keep_last_n)
        self.storage: Storage = open_storage(storage_path, backend, storage_options)
        self.step = layout.validate_step(step)
        self.rank = 0
        self.is_coordinator = False

    def reset(self, checkpoint_id: Any = None) -> None:
        if checkpoint_id is not None:
            self.step = _step_of(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator
        self.rank = layout.validate_rank(kwargs.get("rank") or 0)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        key = layout.manifest_key(self.step)
        try:
            exists = self.storage.read_if_exists(key) is not None
        except OSError as exc:
            raise CheckpointError(f"step {self.step}: cannot reach {self.storage.describe(key)}: {exc}") from exc
        if exists:
            raise CheckpointError(f"step {self.step} already exists (committed) at {self.storage.describe(key)}")
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Tell each rank its rank (DCP does not always pass one to ``set_up_storage_writer``)."""
        return [dataclasses.replace(plan, storage_data=rank) for rank, plan in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        rank = plan.storage_data if isinstance(plan.storage_data, int) else self.rank
        chunks: list[memoryview] = []
        keep_alive: list[Any] = []
        placed: list[tuple[Any, ItemLocation]] = []
        offset = 0
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                view = memoryview(data.getbuffer()).cast("B")
                location = ItemLocation(rank, offset, len(view), None, ())
            else:
                tensor = data.detach()
                if tensor.device.type != "cpu":
                    tensor = tensor.cpu()
                tensor = tensor.contiguous()
                view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy()).cast("B")
                location = ItemLocation(rank, offset, len(view), _dtype_name(tensor.dtype), tuple(tensor.shape))
            keep_alive.append(data if item.type == WriteItemType.BYTE_IO else tensor)
            chunks.append(view)
            placed.append((item, location))
            offset += len(view)
        directory = layout.step_dir(self.step)
        try:
            _key, size, checksum = self.storage.write_part_as(
                directory, lambda crc: layout.part_key(self.step, rank, "none", crc), chunks
            )
        except OSError as exc:
            raise CheckpointError(
                f"step {self.step}: writing rank {rank}'s part under {self.storage.describe(directory)} failed: {exc}"
            ) from exc
        part = _PartLocation(rank, size, checksum)
        results = [
            WriteResult(index=item.index, size_in_bytes=location.length, storage_data=(location, part))
            for item, location in placed
        ]
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """The commit (coordinator only): DCP metadata, then the create-only manifest, then retention."""
        step, world_size = self.step, len(results)
        parts = {rank: PartReport(step, rank, 0, 0, "none") for rank in range(world_size)}
        locations: dict[MetadataIndex, ItemLocation] = {}
        for rank_results in results:
            for result in rank_results:
                location, part = result.storage_data
                parts[part.rank] = PartReport(step, part.rank, part.part_size, part.part_crc32c, "none")
                locations[result.index] = location
        view = scan(self.storage)
        stored = {report.rank: report for report in recover_step(view, step, world_size).reports}
        wrong = sorted(rank for rank, report in parts.items() if stored.get(rank) != report)
        if wrong:
            raise CheckpointError(f"step {step}: the parts of ranks {wrong} are not in storage as reported")
        encoded = encode_metadata(metadata, locations, DCP_VERSION)
        checksum = crc32c(encoded)
        meta_name = layout.dcp_metadata_name(checksum)
        meta_key = layout.dcp_metadata_key(step, meta_name)
        try:
            # Atomic and create-only, like a manifest: an existing file of this name was
            # written whole by an earlier attempt and has these very bytes (its name is
            # their CRC-32C; the manifest's size and checksum are verified on load).
            self.storage.write_manifest(meta_key, encoded)
        except FileExistsError:
            pass
        except OSError as exc:
            raise CheckpointError(f"step {step}: writing {self.storage.describe(meta_key)} failed: {exc}") from exc
        commit = StepCommit(step, world_size)
        for report in parts.values():
            commit.add(report)
        record = {"name": meta_name, "size": len(encoded), "crc32c": format_checksum(checksum), "version": DCP_VERSION}
        manifest = commit.manifest(created_unix=time.time(), metadata={MANIFEST_KEY: record})
        if publish_manifest(self.storage, manifest).metadata.get(MANIFEST_KEY) != record:
            # Another coordinator committed these very parts with other DCP metadata.
            key = layout.manifest_key(step)
            raise CheckpointError(f"step {step} already exists (committed) at {self.storage.describe(key)}, "
                                  "with other DCP metadata")
        self._retain(view)

    def _retain(self, before: StorageView) -> None:
        """``keep_last_n`` on the listing taken before the commit, plus the step just committed.

        Unlike the manager's leader, no one finishes a DCP step whose coordinator died
        before its manifest, so every uncommitted step older than this one is an orphan,
        complete or not. (A still-running ``async_save`` of an older step than one just
        committed loses its parts and fails at its own commit, naming the parts.) A failure
        is logged: the step is committed, and the next commit retries.
        """
        view = StorageView(
            committed=tuple(sorted(set(before.committed) | {self.step})),
            in_flight={s: p for s, p in before.in_flight.items() if s != self.step},
            files=before.files,
        )
        sweep(self.storage, view, self.keep_last_n, protected={self.step})

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=f"{self.storage.url}#step={self.step}")

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False  # never chosen by DCP on its own: pass the writer explicitly


class DtruntimeStorageReader(StorageReader):
    """Read the DCP checkpoint of ``step`` (None: the newest committed DCP step that
    verifies) under ``storage_path``. ``reset(checkpoint_id)`` accepts a step number."""

    def __init__(
        self,
        storage_path: str,
        step: int | None = None,
        *,
        backend: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.storage: Storage = open_storage(storage_path, backend, storage_options)
        self.step = None if step is None else layout.validate_step(step)
        self._manifest: Manifest | None = None
        self._locations: dict[MetadataIndex, ItemLocation] = {}

    def reset(self, checkpoint_id: Any = None) -> None:
        if checkpoint_id is not None:
            self.step = _step_of(checkpoint_id)
        self._manifest, self._locations = None, {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError("dtruntime DCP checkpoints have one global metadata, no rank-local ones")
        if self.step is not None:
            manifest, metadata, locations = self._read_step(self.step)
        else:
            _newest, (manifest, metadata, locations) = newest_that_verifies(self.storage, self._read_step)
        self.step, self._manifest, self._locations = manifest.step, manifest, locations
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if self._manifest is None:  # DCP passes metadata read by this reader; be safe if not
            self.read_metadata()

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Read each part this plan needs once, verify it, then serve its items from it."""
        manifest = self._manifest
        assert manifest is not None
        by_rank: dict[int, list[Any]] = {}
        for request in plan.items:
            location = self._location(request.storage_index)
            by_rank.setdefault(location.rank, []).append((request, location))
        for rank, requests in sorted(by_rank.items()):
            buffer = self._read_part(manifest, rank)
            whole = torch.from_numpy(buffer)
            for request, location in requests:
                end = location.offset + location.length
                if end > len(buffer):
                    raise CheckpointError(f"checkpoint step {manifest.step} rank {rank}: item {request.storage_index.fqn!r} "
                                          "lies outside its part (damaged DCP metadata)")
                if request.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(request, io.BytesIO(buffer[location.offset : end].tobytes()))
                    continue
                stored = whole[location.offset : end].view(_dtype_of(location.dtype)).view(location.shape)
                source = narrow_tensor_by_index(stored, request.storage_offsets, request.lengths)
                target = planner.resolve_tensor(request).detach()
                if target.size() != source.size():
                    raise CheckpointError(
                        f"checkpoint step {manifest.step}: {request.storage_index.fqn!r} has shape "
                        f"{tuple(source.size())} where the planner expects {tuple(target.size())}"
                    )
                target.copy_(source)
                planner.commit_tensor(request, target)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False

    # ------------------------------------------------------------- internals

    def _location(self, index: MetadataIndex) -> ItemLocation:
        location = self._locations.get(index)
        if location is None:
            raise CheckpointError(f"checkpoint step {self.step} has no stored item {index.fqn!r} at {index.offset}")
        return location

    def _read_step(self, step: int) -> tuple[Manifest, Metadata, dict[MetadataIndex, ItemLocation]]:
        manifest = read_manifest(self.storage, step)
        source = self.storage.describe(layout.manifest_key(step))
        record = manifest.metadata.get(MANIFEST_KEY)
        if not isinstance(record, dict):
            raise CheckpointError(f"checkpoint step {step} was not saved through DCP (no {MANIFEST_KEY!r} in {source})")
        meta_key = layout.dcp_metadata_key(step, record.get("name", layout.DCP_METADATA_NAME))
        meta_source = self.storage.describe(meta_key)
        encoded = read_key(self.storage.read, self.storage, meta_key, f"checkpoint step {step}: ")
        if len(encoded) != record.get("size") or format_checksum(crc32c(encoded)) != record.get("crc32c"):
            raise CheckpointError(f"checkpoint step {step}: {meta_source} does not match its manifest (corrupt)")
        metadata, locations = decode_metadata(encoded, meta_source)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return manifest, metadata, locations

    def _read_part(self, manifest: Manifest, rank: int) -> Any:
        if not 0 <= rank < manifest.world_size:
            raise CheckpointError(f"checkpoint step {manifest.step} has no part of rank {rank}")
        return read_part_buffer(self.storage, manifest, manifest.parts[rank])


def _step_of(checkpoint_id: Any) -> int:
    if isinstance(checkpoint_id, str) and checkpoint_id.isdigit():
        return layout.validate_step(int(checkpoint_id))
    if isinstance(checkpoint_id, int) and not isinstance(checkpoint_id, bool):
        return layout.validate_step(checkpoint_id)
    raise CheckpointError(f"checkpoint_id must be a step number for dtruntime storage, not {checkpoint_id!r}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_of(name: str | None) -> torch.dtype:
    dtype = getattr(torch, name or "", None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"unknown dtype {name!r} in DCP metadata")
    return dtype
