"""DatasetRegistry: register datasets, ask which part of them a rank reads in an epoch.

Every worker registers the same datasets and computes its own share with the pure shard ring
(:mod:`dtruntime.sharding`); nothing is sent over the network. A dataset is either a set of
files under an fsspec URL (local path, ``s3://``, ``memory://``...) in one of the formats of
:data:`dtruntime.data.files.FORMATS`, or just a number of samples (``total_samples`` with no
``path``), in which case the assignment is sample ranges only.

The world comes from the orchestrator when one is given (any object with a ``members()``
method returning live members that have ``.worker_id`` and ``.rank``: the ring is built on
the live worker ids), otherwise from the constructor or the ``RANK``/``WORLD_SIZE``
environment variables (default 0 and 1); standalone member ids are ``rank-<r>``.

A registration is summarised by a :class:`DatasetSpec`, a pure value with a stable
:meth:`~DatasetSpec.fingerprint`; :func:`check_same_spec` compares the specs two workers
registered and names the first differing field (the runtime wires that check across workers).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import sharding
from ..config import DatasetConfig
from ..errors import DatasetError
from . import files as dataset_files
from .files import FileSlice
from .readers.tfrecord import DEFAULT_MAX_RECORD_BYTES

__all__ = [
    "DatasetRegistry",
    "DatasetSpec",
    "LiveMember",
    "MembershipView",
    "ShardAssignment",
    "check_same_spec",
]


@runtime_checkable
class LiveMember(Protocol):
    """What the registry needs of a member: a stable id and its current rank."""

    @property
    def worker_id(self) -> str: ...

    @property
    def rank(self) -> int: ...


@runtime_checkable
class MembershipView(Protocol):
    """Anything that lists the live members (the orchestrator does)."""

    def members(self) -> Sequence[LiveMember]: ...


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that determines a dataset's assignment; equal on every worker or it is a bug.

    ``files`` and ``file_samples`` are empty for a dataset given only by ``total_samples``.
    ``metadata`` holds the extra keyword arguments of ``register`` as sorted ``(key, json)``
    pairs, so it hashes and compares deterministically.
    """

    dataset_id: str
    path: str | None
    format: str | None
    total_samples: int
    shard_size: int
    shuffle: bool
    seed: int
    files: tuple[str, ...] = ()
    file_samples: tuple[int, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()

    def fingerprint(self) -> str:
        """Hex blake2b of a canonical JSON encoding: equal specs, equal fingerprints, any process."""
        payload = json.dumps([[f.name, _jsonable(getattr(self, f.name))] for f in fields(self)], separators=(",", ":"))
        return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()

    @property
    def num_shards(self) -> int:
        return len(self.shard_sizes)

    @property
    def shard_sizes(self) -> list[int]:
        return sharding.uniform_shard_sizes(self.total_samples, self.shard_size)


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value


def check_same_spec(local: DatasetSpec, remote: DatasetSpec, *, remote_name: str = "another worker") -> None:
    """Raise DatasetError naming the first field where ``remote`` differs from ``local``."""
    for field in fields(DatasetSpec):
        mine, theirs = getattr(local, field.name), getattr(remote, field.name)
        if mine != theirs:
            raise DatasetError(
                f"dataset {local.dataset_id!r}: {remote_name} registered a different {field.name} "
                f"({_short(theirs)} here {_short(mine)})"
            )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True)
class ShardAssignment:
    """One run of samples a rank reads: global samples ``[start_sample, end_sample)`` of shard
    ``shard_id``, stored in ``file_paths`` (``file_slices`` gives the exact rows).

    ``padding`` records are the explicit repeats that give every rank the same sample count.
    With ``shuffle`` the samples are read in the order :meth:`sample_order` returns.
    """

    shard_id: int
    file_paths: tuple[str, ...]
    start_sample: int
    end_sample: int
    file_slices: tuple[FileSlice, ...] = ()
    padding: bool = False
    shuffle: bool = False
    seed: int = 0
    epoch: int = 0

    @property
    def num_samples(self) -> int:
        return self.end_sample - self.start_sample

    def sample_order(self) -> np.ndarray:
        """Global sample indices of this record in reading order."""
        piece = sharding.Piece(self.shard_id, self.start_sample, self.end_sample)
        return sharding.piece_order(self.seed, self.epoch, piece, self.shuffle and not self.padding)


@dataclass(frozen=True)
class _Dataset:
    spec: DatasetSpec
    fs: Any
    file_offsets: tuple[int, ...]
    max_record_bytes: int
    fingerprint: str


class DatasetRegistry:
    """Datasets and their per-rank, per-epoch assignments (see the module docstring).

    ``coordinator_url`` is accepted for compatibility with the original API; the assignment is
    computed locally either way. ``storage_options`` go to fsspec when opening dataset URLs
    (``{"endpoint_url": ...}`` for an S3-compatible store); they are not part of the spec, so
    credentials never enter a fingerprint.
    """

    _CACHE_SIZE = 16

    def __init__(
        self,
        coordinator_url: str | None = None,
        *,
        orchestrator: MembershipView | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        config: DatasetConfig | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if orchestrator is not None and not callable(getattr(orchestrator, "members", None)):
            raise DatasetError("orchestrator must have a members() method returning live members")
        self.coordinator_url = coordinator_url
        self._orchestrator = orchestrator
        self._config = config or DatasetConfig()
        self._storage_options = dict(storage_options or {})
        self._rank = _env_int("RANK", 0) if rank is None else rank
        self._world_size = _env_int("WORLD_SIZE", 1) if world_size is None else world_size
        if orchestrator is None:
            _check_world(self._rank, self._world_size)
        self._datasets: dict[str, _Dataset] = {}
        self._assignments: OrderedDict[tuple[Any, ...], sharding.Assignment] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ registration

    def register(
        self,
        dataset_id: str,
        path: str | None = None,
        format: str | None = None,
        total_samples: int | None = None,
        shard_size: int | None = 10000,
        shuffle: bool = False,
        seed: int | None = None,
        **metadata: Any,
    ) -> DatasetSpec:
        """Register a dataset; registering the same spec again is a no-op, a different one an error.

        ``max_record_bytes`` (TFRecord) may be given among the keyword arguments.
        """
        if not isinstance(dataset_id, str) or not dataset_id:
            raise DatasetError(f"dataset_id must be a non-empty string, not {dataset_id!r}")
        if shard_size is None:
            shard_size = self._config.default_shard_size
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0:
            raise DatasetError(f"dataset {dataset_id!r}: shard_size must be a positive integer, not {shard_size!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise DatasetError(f"dataset {dataset_id!r}: seed must be an integer or None, not {seed!r}")
        if total_samples is not None and (
            isinstance(total_samples, bool) or not isinstance(total_samples, int) or total_samples < 0
        ):
            raise DatasetError(f"dataset {dataset_id!r}: total_samples must be an integer >= 0, not {total_samples!r}")
        max_record_bytes = metadata.get("max_record_bytes", DEFAULT_MAX_RECORD_BYTES)
        try:
            encoded_metadata = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in metadata.items()))
        except TypeError as exc:
            raise DatasetError(f"dataset {dataset_id!r}: metadata must be JSON-serialisable: {exc}") from exc

        fs = None
        files: list[str] = []
        counts: list[int] = []
        if path is None:
            if total_samples is None:
                raise DatasetError(f"dataset {dataset_id!r}: give a path, or total_samples for a file-less dataset")
            if format is not None:
                dataset_files.check_format(format)
            total = total_samples
        else:
            fs, root = dataset_files.resolve(path, self._storage_options)
            format, files = dataset_files.discover(fs, root, format, path)
            counts = [dataset_files.count_samples(fs, f, format, max_record_bytes) for f in files]
            total = sum(counts)
            if total_samples is not None and total_samples != total:
                raise DatasetError(
                    f"dataset {dataset_id!r}: total_samples={total_samples} was declared but the "
                    f"{len(files)} {format} files under {path!r} hold {total} samples"
                )
        spec = DatasetSpec(
            dataset_id=dataset_id,
            path=path,
            format=format,
            total_samples=total,
            shard_size=shard_size,
            shuffle=bool(shuffle),
            seed=0 if seed is None else seed,
            files=tuple(_display_path(fs, f, path) for f in files),
            file_samples=tuple(counts),
            metadata=encoded_metadata,
        )
        with self._lock:
            existing = self._datasets.get(dataset_id)
            if existing is not None:
                check_same_spec(existing.spec, spec, remote_name="this registration")
                return existing.spec
            offsets = tuple(np.concatenate(([0], np.cumsum(counts, dtype=np.int64))).tolist())
            self._datasets[dataset_id] = _Dataset(spec, fs, offsets, max_record_bytes, spec.fingerprint())
        return spec

    def spec(self, dataset_id: str) -> DatasetSpec:
        return self._dataset(dataset_id).spec

    def datasets(self) -> list[str]:
        return sorted(self._datasets)

    # ------------------------------------------------------------------ assignments

    def get_shard(self, dataset_id: str, worker_rank: int, epoch: int) -> list[str]:
        """The files ``worker_rank`` reads in ``epoch``, in reading order, each listed once
        (empty for a file-less dataset)."""
        records = self.get_assignment(dataset_id, worker_rank, epoch)
        return list(dict.fromkeys(path for record in records for path in record.file_paths))

    def get_assignment(self, dataset_id: str, worker_rank: int, epoch: int) -> list[ShardAssignment]:
        """The records ``worker_rank`` reads in ``epoch``, in order, padding records last.

        Every rank's records add up to the same number of samples; over all ranks the
        non-padding records cover ``[0, total_samples)`` exactly once.
        """
        dataset = self._dataset(dataset_id)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise DatasetError(f"epoch must be an integer >= 0, not {epoch!r}")
        member_id, member_ids = self._member_for(worker_rank)
        assignment = self._assignment(dataset, member_ids, epoch)
        work = assignment[member_id]
        spec = dataset.spec
        records = [self._record(dataset, piece, epoch) for piece in work.pieces]
        for sample in work.padding:
            shard = sample // spec.shard_size
            records.append(self._record(dataset, sharding.Piece(shard, sample, sample + 1), epoch, padding=True))
        return records

    def assignment(self, dataset_id: str, epoch: int) -> sharding.Assignment:
        """The whole epoch's assignment over the current members (for take-over and resume)."""
        dataset = self._dataset(dataset_id)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise DatasetError(f"epoch must be an integer >= 0, not {epoch!r}")
        return self._assignment(dataset, self._member_ids(), epoch)

    def open_shard(
        self,
        dataset_id: str,
        worker_rank: int,
        epoch: int,
        *,
        prefetch_shards: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> Any:
        """A :class:`~dtruntime.data.prefetch.ShardDataset` over this rank's records (usable as
        a torch ``IterableDataset`` when torch is installed)."""
        from .prefetch import make_shard_dataset

        dataset = self._dataset(dataset_id)
        if dataset.fs is None:
            raise DatasetError(f"dataset {dataset_id!r} has no files to read (registered by total_samples only)")
        records = self.get_assignment(dataset_id, worker_rank, epoch)
        prefetch = self._config.prefetch_shards if prefetch_shards is None else prefetch_shards
        return make_shard_dataset(
            dataset.fs,
            dataset.spec.format,
            records,
            prefetch_shards=prefetch,
            columns=columns,
            max_record_bytes=dataset.max_record_bytes,
        )

    # ------------------------------------------------------------------ internals

    def _dataset(self, dataset_id: str) -> _Dataset:
        try:
            return self._datasets[dataset_id]
        except KeyError:
            known = ", ".join(sorted(self._datasets)) or "none"
            raise DatasetError(f"dataset {dataset_id!r} is not registered (registered: {known})") from None

    def _member_ids(self) -> list[str]:
        if self._orchestrator is None:
            return [f"rank-{r}" for r in range(self._world_size)]
        return [str(m.worker_id) for m in self._live_members()]

    def _live_members(self) -> list[LiveMember]:
        members = list(self._orchestrator.members())  # type: ignore[union-attr]
        if not members:
            raise DatasetError("the orchestrator reports no live members")
        return members

    def _member_for(self, worker_rank: int) -> tuple[str, list[str]]:
        if isinstance(worker_rank, bool) or not isinstance(worker_rank, int):
            raise DatasetError(f"worker_rank must be an integer, not {worker_rank!r}")
        if self._orchestrator is None:
            if not 0 <= worker_rank < self._world_size:
                raise DatasetError(f"worker_rank {worker_rank} is out of range for world_size {self._world_size}")
            return f"rank-{worker_rank}", self._member_ids()
        members = self._live_members()
        matches = [m for m in members if m.rank == worker_rank]
        if not matches:
            live = sorted(m.rank for m in members)
            raise DatasetError(f"worker_rank {worker_rank} is not a live member (live ranks: {live})")
        return str(matches[0].worker_id), [str(m.worker_id) for m in members]

    def _assignment(self, dataset: _Dataset, member_ids: list[str], epoch: int) -> sharding.Assignment:
        spec = dataset.spec
        key = (dataset.fingerprint, tuple(sorted(member_ids)), epoch)
        with self._lock:
            cached = self._assignments.get(key)
            if cached is not None:
                self._assignments.move_to_end(key)
                return cached
        sizes = spec.shard_sizes
        assignment = sharding.assign_shards(
            len(sizes), member_ids, epoch, spec.seed, shard_sizes=sizes, shuffle=spec.shuffle
        )
        with self._lock:
            self._assignments[key] = assignment
            while len(self._assignments) > self._CACHE_SIZE:
                self._assignments.popitem(last=False)
        return assignment

    def _record(self, dataset: _Dataset, piece: sharding.Piece, epoch: int, padding: bool = False) -> ShardAssignment:
        spec = dataset.spec
        slices: tuple[FileSlice, ...] = ()
        if spec.files:
            slices = dataset_files.slices_for(spec.files, dataset.file_offsets, piece.start, piece.end)
        return ShardAssignment(
            shard_id=piece.shard_id,
            file_paths=tuple(dict.fromkeys(s.path for s in slices)),
            start_sample=piece.start,
            end_sample=piece.end,
            file_slices=slices,
            padding=padding,
            shuffle=spec.shuffle,
            seed=spec.seed,
            epoch=epoch,
        )


def _display_path(fs: Any, file_path: str, url: str) -> str:
    """Local datasets keep plain paths; others keep their protocol (``s3://b/k``)."""
    return fs.unstrip_protocol(file_path) if "://" in url else file_path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DatasetError(f"environment variable {name}={raw!r} is not an integer") from None


def _check_world(rank: int, world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise DatasetError(f"world_size must be an integer >= 1, not {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise DatasetError(f"rank {rank!r} is out of range for world_size {world_size}")
