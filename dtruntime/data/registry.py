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
:meth:`~DatasetSpec.fingerprint`; :func:`check_same_spec` compares two specs and names the
first differing field.

Cross-worker check: with a :class:`ControlPlane` (the real orchestrator is one),
:meth:`DatasetRegistry.register` is collective, like a barrier: every worker brings a
per-field summary of its spec (:func:`spec_summary`) to an agreement barrier named after
the dataset (:mod:`dtruntime.protocol.spec_check`), and a worker whose spec differs from
the lowest-ranked worker's makes every worker raise a DatasetError naming the field and
the workers. Only the first registration of a dataset on a worker takes part; repeating
it is a local no-op.

Elastic epochs (with an orchestrator): each worker publishes how far it got through its
epoch stream (:meth:`DatasetRegistry.report_progress`, a counter the orchestrator gossips).
When workers are lost mid-epoch, every survivor calls :meth:`DatasetRegistry.take_over`:
the survivors agree on who is lost and on how far each lost worker got (the furthest any
survivor heard, by rounds of agreement barriers, so all of them use the same numbers) and
split exactly the lost workers' unfinished samples among themselves, on the membership
the epoch started with (:func:`dtruntime.sharding.take_over_cursors`). Samples a lost
worker read after its last report that reached anybody are read again by a survivor:
they count as unfinished. The rounds are the pure state machine
:class:`dtruntime.protocol.takeover.TakeOverRounds`, which the simulator runs too
(``python -m simulations take-over``); this module only arrives at the barriers it names,
waits, and reads the split off the decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import sharding
from ..config import Config, DatasetConfig, launcher_world
from ..errors import ConfigError, DatasetError
from ..protocol.spec_check import spec_barrier_id, spec_mismatch
from ..protocol.takeover import AgreementResult, TakeOverRounds
from . import files as dataset_files
from .files import FileSlice
from .readers.tfrecord import DEFAULT_MAX_RECORD_BYTES

log = logging.getLogger("dtruntime.data")

__all__ = [
    "DatasetRegistry",
    "DatasetSpec",
    "LiveMember",
    "ControlPlane",
    "MembershipView",
    "ShardAssignment",
    "check_same_spec",
    "spec_summary",
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


@runtime_checkable
class ControlPlane(MembershipView, Protocol):
    """The control plane the registry's collective operations need (the orchestrator is
    one): agreement barriers, gossiped progress, and this worker's id. With only a
    :class:`MembershipView`, the ring still follows membership, but ``register`` checks
    no spec across workers and ``report_progress`` / ``take_over`` are refused."""

    @property
    def worker_id(self) -> str: ...

    @property
    def heartbeat_period_s(self) -> float: ...

    def agree_sync(self, barrier_id: str, value: str, timeout: float | None = None, *,
                   elastic: bool = False) -> AgreementResult: ...

    def set_progress(self, key: str, value: int) -> None: ...

    def progress(self, key: str) -> dict[str, int]: ...

    def note_dataset(self, name: str, total_samples: int) -> None: ...


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


def spec_summary(spec: DatasetSpec) -> str:
    """``field=token;...`` for every field of ``spec``: equal specs, equal summaries.

    A token is the field's canonical JSON when that is short (so an error can show the
    other worker's value), else ``#`` and a 12-hex blake2b digest of it. At most about
    450 characters, printable, whatever the spec (fits an agreement barrier value).
    """
    tokens = []
    for field in fields(DatasetSpec):
        text = json.dumps(_jsonable(getattr(spec, field.name)), separators=(",", ":"))
        if len(text) > _SUMMARY_LITERAL_MAX or ";" in text:
            text = "#" + hashlib.blake2b(text.encode("utf-8"), digest_size=6).hexdigest()
        tokens.append(f"{field.name}={text}")
    return ";".join(tokens)


_SUMMARY_LITERAL_MAX = 32


def _shown(token: str) -> str:
    return f"(hash {token[1:]})" if token.startswith("#") else token


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
    credentials never enter a fingerprint. ``spec_check_timeout`` bounds the cross-worker
    spec check of :meth:`register` (None: wait as long as a barrier would). ``config`` (the
    ``[dataset]`` section) gives ``default_shard_size`` and ``prefetch_shards`` when a call
    leaves them out; without one, :meth:`Config.load` reads them (``$DTRUNTIME_CONFIG`` and
    the environment).
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
        spec_check_timeout: float | None = 300.0,
    ) -> None:
        if orchestrator is not None and not isinstance(orchestrator, MembershipView):
            raise DatasetError("orchestrator must have a members() method returning live members")
        self.coordinator_url = coordinator_url
        self.spec_check_timeout = spec_check_timeout
        self._orchestrator: MembershipView | None = orchestrator
        self._plane: ControlPlane | None = orchestrator if isinstance(orchestrator, ControlPlane) else None
        self._config = config if config is not None else Config.load().dataset
        self._storage_options = dict(storage_options or {})
        # With an orchestrator its live members decide and these are not read.
        self._rank, self._world_size = _world(rank, world_size) if orchestrator is None else (0, 1)
        self._datasets: dict[str, _Dataset] = {}
        self._epoch_members: OrderedDict[tuple[str, int], list[str]] = OrderedDict()  # at the epoch's start
        self._assignments: OrderedDict[tuple[Any, ...], sharding.Assignment] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ registration

    def register(
        self,
        dataset_id: str,
        path: str | None = None,
        format: str | None = None,
        total_samples: int | None = None,
        shard_size: int | None = None,
        shuffle: bool = False,
        seed: int | None = None,
        **metadata: Any,
    ) -> DatasetSpec:
        """Register a dataset; registering the same spec again is a no-op, a different one an error.

        ``shard_size`` None takes ``[dataset] default_shard_size`` (10000 unless configured).
        ``max_record_bytes`` (TFRecord) may be given among the keyword arguments. With an
        orchestrator, the first registration of ``dataset_id`` is collective: it returns
        once every worker registered it, and raises DatasetError naming the first
        differing field if any worker's spec differs (see the module docstring).
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
        self._check_across_workers(spec)
        with self._lock:
            existing = self._datasets.get(dataset_id)
            if existing is not None:  # registered meanwhile by another thread
                check_same_spec(existing.spec, spec, remote_name="this registration")
                return existing.spec
            offsets = tuple(np.concatenate(([0], np.cumsum(counts, dtype=np.int64))).tolist())
            self._datasets[dataset_id] = _Dataset(spec, fs, offsets, max_record_bytes, spec.fingerprint())
        if self._plane is not None:  # its HTTP API shows epoch progress
            self._plane.note_dataset(_short_name(dataset_id), spec.total_samples)
        return spec

    def _check_across_workers(self, spec: DatasetSpec) -> None:
        """Agree on ``spec`` with every worker (a no-op without a :class:`ControlPlane`)."""
        if self._plane is None:
            return
        mine = spec_summary(spec)
        barrier_id = spec_barrier_id(_short_name(spec.dataset_id))
        mismatch = spec_mismatch(mine, self._plane.agree_sync(barrier_id, mine, timeout=self.spec_check_timeout))
        if mismatch is None:
            return
        raise DatasetError(
            f"dataset {spec.dataset_id!r}: workers registered different specs: {mismatch.field} is "
            f"{_shown(mismatch.other_token)} on worker {mismatch.other_worker} and {_shown(mismatch.own_token)} "
            f"here; workers that differ from {mismatch.reference} (lowest rank): {', '.join(mismatch.differing)}"
        )

    def spec(self, dataset_id: str) -> DatasetSpec:
        return self._dataset(dataset_id).spec

    def datasets(self) -> list[str]:
        return sorted(self._datasets)

    # ------------------------------------------------------------------ assignments

    def get_shard(self, dataset_id: str, worker_rank: int, epoch: int) -> sharding.FileShare:
        """The whole files ``worker_rank`` reads in ``epoch`` (the original API's call).

        Every file goes to exactly one rank, so ranks that each read every file they are
        given read every sample exactly once between them (:func:`dtruntime.sharding.assign_files`,
        balanced by samples; the same files every epoch, so caches stay warm). Files are
        indivisible, so ranks get different sample counts: the result is a ``list`` of
        paths that also carries ``samples``, ``member_samples`` and ``imbalance`` (largest
        rank's samples over the mean), and an imbalance above 1.25 is logged as a warning.
        A DDP loop that needs equal step counts uses :meth:`get_assignment` or
        :meth:`open_shard` (the exact per-sample split). Empty for a file-less dataset.
        Membership rules are those of :meth:`get_assignment`.
        """
        dataset = self._dataset(dataset_id)
        _check_epoch(epoch)
        member_id, member_ids = self._member_for(worker_rank)
        member_ids = self._remember_epoch_members(dataset_id, epoch, member_ids)
        return file_share(dataset.spec, member_ids, member_id)

    def get_assignment(self, dataset_id: str, worker_rank: int, epoch: int) -> list[ShardAssignment]:
        """The records ``worker_rank`` reads in ``epoch``, in order, padding records last.

        Every rank's records add up to the same number of samples; over all ranks the
        non-padding records cover ``[0, total_samples)`` exactly once. With an
        orchestrator, the first call for ``(dataset_id, epoch)`` fixes the epoch's
        membership: a worker lost later does not re-split the epoch (the survivors call
        :meth:`take_over`); the next epoch is split over the live members.
        """
        dataset = self._dataset(dataset_id)
        _check_epoch(epoch)
        member_id, member_ids = self._member_for(worker_rank)
        member_ids = self._remember_epoch_members(dataset_id, epoch, member_ids)
        assignment = self._assignment(dataset, member_ids, epoch)
        return self._records(dataset, assignment[member_id], epoch)

    # ------------------------------------------------------------------ elastic epochs

    def report_progress(self, dataset_id: str, epoch: int, cursor: int) -> None:
        """Publish that this worker has finished ``cursor`` samples of its ``epoch`` stream
        (its :meth:`get_assignment` records read in order, ``sample_order()`` within each,
        padding last). Only grows within an epoch; call it every few batches."""
        plane = self._plane
        if plane is None:
            raise DatasetError("report_progress needs an orchestrator (progress is gossiped between workers)")
        self._dataset(dataset_id)
        _check_epoch(epoch)
        if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
            raise DatasetError(f"cursor must be an integer >= 0, not {cursor!r}")
        plane.set_progress(_progress_key(dataset_id, epoch), cursor)

    def take_over(self, dataset_id: str, epoch: int, *, timeout: float | None = None) -> list[ShardAssignment]:
        """This worker's share of what the workers lost since ``epoch`` began left unread.

        Collective: every live worker of the epoch calls it once its own records are read,
        whether or not it has seen a loss (a loss seen before the end of the epoch is
        still a loss). The workers first agree on who is lost (views can differ for a
        heartbeat or two after a loss: they retry until they agree), so all of them take
        the same path (the rounds: :mod:`dtruntime.protocol.takeover`). Returns records
        to read on top of this worker's own; empty when no worker of the epoch's
        membership is lost. The epoch's membership is the one
        :meth:`get_assignment` first used for ``(dataset_id, epoch)`` on this worker.
        A worker lost while the survivors read the returned records is not covered.
        """
        plane = self._plane
        if plane is None:
            raise DatasetError("take_over needs an orchestrator (survivors agree on what the lost finished)")
        dataset = self._dataset(dataset_id)
        _check_epoch(epoch)
        with self._lock:
            epoch_members = self._epoch_members.get((dataset_id, epoch))
        if epoch_members is None:
            raise DatasetError(f"dataset {dataset_id!r} epoch {epoch}: get_assignment was never called for it here")
        rounds = TakeOverRounds(_progress_key(dataset_id, epoch), epoch_members, str(plane.worker_id),
                                retry_pause=plane.heartbeat_period_s)
        while rounds.decision is None:
            time.sleep(max(0.0, rounds.not_before - time.monotonic()))
            proposal = rounds.propose(self._live_ids(), plane.progress(rounds.key))
            result = plane.agree_sync(proposal.barrier_id, proposal.value, timeout=timeout, elastic=proposal.elastic)
            rounds.on_result(result, time.monotonic())
        decision = rounds.decision
        if not decision.lost:
            return []
        assignment = self._assignment(dataset, epoch_members, epoch)
        extra = sharding.take_over_cursors(assignment, decision.credited, decision.survivors)
        return self._records(dataset, extra[rounds.me], epoch)

    def assignment(self, dataset_id: str, epoch: int) -> sharding.Assignment:
        """The whole epoch's assignment over the current members (for take-over and resume)."""
        dataset = self._dataset(dataset_id)
        _check_epoch(epoch)
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

    def _records(self, dataset: _Dataset, work: sharding.MemberAssignment, epoch: int) -> list[ShardAssignment]:
        records = [self._record(dataset, piece, epoch) for piece in work.pieces]
        for sample in work.padding:
            shard = sample // dataset.spec.shard_size
            records.append(self._record(dataset, sharding.Piece(shard, sample, sample + 1), epoch, padding=True))
        return records

    def _remember_epoch_members(self, dataset_id: str, epoch: int, member_ids: list[str]) -> list[str]:
        """With an orchestrator, an epoch keeps the membership it started with (for take-over)."""
        if self._orchestrator is None:
            return member_ids
        with self._lock:
            remembered = self._epoch_members.setdefault((dataset_id, epoch), member_ids)
            while len(self._epoch_members) > self._CACHE_SIZE:
                self._epoch_members.popitem(last=False)
        return remembered

    def _dataset(self, dataset_id: str) -> _Dataset:
        try:
            return self._datasets[dataset_id]
        except KeyError:
            known = ", ".join(sorted(self._datasets)) or "none"
            raise DatasetError(f"dataset {dataset_id!r} is not registered (registered: {known})") from None

    def _member_ids(self) -> list[str]:
        if self._orchestrator is None:
            return [f"rank-{r}" for r in range(self._world_size)]
        return self._live_ids()

    def _live_ids(self) -> list[str]:
        return [str(m.worker_id) for m in self._live_members()]

    def _live_members(self) -> list[LiveMember]:
        assert self._orchestrator is not None  # callers check
        members = list(self._orchestrator.members())
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


def file_share(spec: DatasetSpec, member_ids: Sequence[str], member_id: str) -> sharding.FileShare:
    """``member_id``'s whole files of ``spec`` split over ``member_ids``; warns when unbalanced."""
    owned = sharding.assign_files(spec.file_samples, member_ids, spec.seed)
    counts = {member: sum(spec.file_samples[i] for i in indices) for member, indices in owned.items()}
    share = sharding.FileShare((spec.files[i] for i in owned[member_id]), counts[member_id], counts)
    if share.imbalance > FILE_IMBALANCE_WARNING:
        log.warning(
            "dataset %r: get_shard splits %d whole files over %d ranks with imbalance %.2f (largest rank "
            "%d samples, mean %.0f); use get_assignment/open_shard for an exact split",
            spec.dataset_id, len(spec.files), len(member_ids), share.imbalance,
            max(counts.values()), spec.total_samples / len(member_ids),
        )
    return share


FILE_IMBALANCE_WARNING = 1.25  # get_shard warns above this max/mean sample ratio


def _display_path(fs: Any, file_path: str, url: str) -> str:
    """Local datasets keep plain paths; others keep their protocol (``s3://b/k``)."""
    return fs.unstrip_protocol(file_path) if "://" in url else file_path


def _short_name(dataset_id: str) -> str:
    """``dataset_id`` when it fits a barrier id or gossip key, else ``#`` and a digest of it."""
    if len(dataset_id) <= 200 and dataset_id.isprintable():
        return dataset_id
    return "#" + hashlib.blake2b(dataset_id.encode("utf-8"), digest_size=12).hexdigest()


def _progress_key(dataset_id: str, epoch: int) -> str:
    """The gossip key of a dataset's epoch (at most 256 characters)."""
    return f"{_short_name(dataset_id)}@{epoch}"


def _check_epoch(epoch: Any) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise DatasetError(f"epoch must be an integer >= 0, not {epoch!r}")


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit ``rank`` / ``world_size``, each else the launcher's ``RANK`` / ``WORLD_SIZE``."""
    if isinstance(world_size, int) and not isinstance(world_size, bool) and world_size < 1:
        raise DatasetError(f"world_size must be an integer >= 1, not {world_size!r}")
    if rank is not None and world_size is not None:
        _check_world(rank, world_size)
        return rank, world_size
    try:
        env_rank, env_world = launcher_world(os.environ)
    except ConfigError as exc:
        raise DatasetError(str(exc)) from None
    resolved = (env_rank if rank is None else rank), (env_world if world_size is None else world_size)
    _check_world(*resolved)
    return resolved


def _check_world(rank: int, world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise DatasetError(f"world_size must be an integer >= 1, not {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise DatasetError(f"rank {rank!r} is out of range for world_size {world_size}")
