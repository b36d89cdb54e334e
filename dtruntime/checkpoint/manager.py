"""CheckpointManager: asynchronous, verified checkpoints on local disk, S3 or any fsspec store.

This module is the API and the bookkeeping of saves in flight; the work is elsewhere:
:mod:`.writer` (the writer thread: parts, then the commit or the report to the leader),
:mod:`.janitor` (the retention thread), :mod:`.publish` (the one commit path),
:mod:`.reads` (verified reads), :mod:`.results` (handles and results).

``save_async``/``save_bytes``/``save`` validate their input, wait for one of
``max_in_flight`` slots (the memory bound: a queued save holds a reference to its
payload until it is written), queue the job for the writer, which commits saves in the
order they were queued, and return a :class:`SaveHandle`; the handle completes once the
step is durable and committed. ``bytes`` payloads are never copied by the caller's
thread. ``save(state_dict)`` copies the state's tensors once into a reusable staging
buffer (:mod:`.staging`; pinned and overlapped device-to-host copies where CUDA is
present) and returns; with ``guard=(model, optimizer)`` it returns before that copy,
which a snapshot thread makes while the guarded objects' next forward and step wait for
it (:mod:`.snapshot`); the part is a pickle-free safetensors file (:mod:`.tensors`) whose
header, checksum and write happen in the writer thread. ``load_state`` reads such a part
into one aligned buffer, checksumming each slice as it lands, and returns tensors whose
memory is that buffer; parts saved by earlier versions (``torch.save`` pickles) still
load, with ``weights_only``.

A step is refused at once when it is queued already or known to be committed (by this
manager, or seen in storage by a retention sweep), and by the writer when its manifest
exists. After a single-rank commit the janitor applies retention while the writer goes
on; it never deletes a step that is queued or being written. ``flush`` waits for
retention too. A failed save never touches an earlier checkpoint.

Nothing queued is dropped silently: every open manager is closed at interpreter exit
(also an exit by an uncaught exception), waiting up to ``exit_timeout_s`` for pending
saves and logging an ERROR naming each step that will not exist (:mod:`.shutdown`).
Closing the orchestrator a manager is attached to closes the manager first, the same way.

Reads (``load``, ``list_checkpoints``) run in the caller's thread (asyncio variants in
the default executor) and go straight to storage, so another process's commits are seen.
``load()`` with no step (or step 0 while step 0 is not committed: the original API's
"latest") falls back past newer committed steps that do not verify, to the newest whose
every part does, so all ranks of a job resume from the same step;
``list_checkpoints(verify=True)`` lists those.

With an orchestrator and a world of more than one rank, the writer writes this rank's
part only (its key names the rank) and reports it through the orchestrator; its slot is
free again as soon as the part is written, and the handle completes when the leader
reports the step committed (CheckpointError naming the missing ranks when it is
abandoned). A failed write is reported too, so the other ranks' handles fail at once
instead of waiting. Manifests and retention are the leader's: the manager registers a
:class:`~.leader.LeaderCommitter` with the orchestrator, which runs it in its commit
thread while this worker leads. ``load`` returns this rank's part by default.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any

from ..config import Config
from ..errors import ArgumentTypeError, CheckpointError, CheckpointNotFoundError, CheckpointTimeout, ConfigError
from . import layout, reads, shutdown
from .commit import StorageView
from .integrity import Buffer
from .janitor import Janitor
from .leader import LeaderCommitter
from .manifest import Manifest, check_metadata
from .results import SaveHandle, SaveResult
from .retention import RetentionPlan
from .slots import InFlightSlots
from .storage import Storage, open_storage
from .threads import wait_for_progress
from .writer import Outcome, SaveJob, Writer

log = logging.getLogger("dtruntime.checkpoint")


class CheckpointManager:
    """Save and load checkpoints under ``storage_path``.

    The ``[checkpoint]`` settings left as None come from ``config``, or, without one, from
    :meth:`Config.load` (the TOML file at ``$DTRUNTIME_CONFIG`` and the environment), so a
    plain ``CheckpointManager(path)`` honours them; keyword arguments override both.

    Args:
        storage_path: a directory, or any fsspec URL (``s3://bucket/prefix``, ``memory://x``).
        backend: ``"local"``, ``"s3"``, ``"memory"`` or None (from the URL; plain path = local).
        keep_last_n: committed steps kept after each save (see :mod:`.retention`).
        compression: ``"auto"`` (default), ``"none"``, ``"gzip"`` or ``"zstd"``.
        storage_options: passed to the fsspec filesystem (e.g. ``endpoint_url`` for s3fs).
        max_in_flight: saves queued or being written at once; further saves wait.
        orchestrator: a :class:`~dtruntime.TrainingOrchestrator` (registered before the
            first save): every rank saves its own part of each step and the leader
            commits it. Without one, or in a world of one, this process commits alone.
            Closing the orchestrator first closes this manager (see :meth:`close_before_exit`).
        exit_timeout_s: how long saves still pending at interpreter exit, or when the
            orchestrator closes, may take to become durable (see :mod:`.shutdown`).
        interval_steps: the cadence of :meth:`should_save` / :meth:`maybe_save`.
        config: a :class:`~dtruntime.Config` to read the ``[checkpoint]`` section from.
    """

    def __init__(
        self,
        storage_path: str,
        backend: str | None = None,
        keep_last_n: int | None = None,
        compression: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        max_in_flight: int = 2,
        orchestrator: Any = None,
        *,
        exit_timeout_s: int | None = None,
        interval_steps: int | None = None,
        config: Config | None = None,
    ) -> None:
        given = {"keep_last_n": keep_last_n, "compression": compression, "exit_timeout_s": exit_timeout_s,
                 "interval_steps": interval_steps}
        settings = (config if config is not None else Config.load()).checkpoint
        settings = replace(settings, **{key: value for key, value in given.items() if value is not None})
        settings.validate()
        self.keep_last_n = settings.keep_last_n
        self.compression = settings.compression
        self.exit_timeout_s = settings.exit_timeout_s
        self.interval_steps = settings.interval_steps
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ConfigError("max_in_flight", f"must be a positive integer, not {max_in_flight!r}")
        self.max_in_flight = max_in_flight
        self._storage: Storage = open_storage(storage_path, backend, storage_options)
        self.rank = 0 if orchestrator is None else orchestrator.rank
        self.world_size = 1 if orchestrator is None else orchestrator.world_size
        self._orchestrator = orchestrator if self.world_size > 1 else None
        self._metrics = getattr(orchestrator, "metrics", None)  # dtruntime.http.Metrics, if any
        self._metadata: dict[int, dict[str, Any]] = {}  # this rank's metadata per step, for the leader
        self._slots = InFlightSlots(max_in_flight)
        self._staging: Any = None  # a staging.StagingPool, made by the first save(state)
        self._snapshots: Any = None  # a snapshot.BackgroundSnapshots, made by the first guarded save
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._known_committed: set[int] = set()
        self._outstanding: set[concurrent.futures.Future[SaveResult]] = set()
        self._unreported: dict[concurrent.futures.Future[SaveResult], tuple[int, CheckpointError]] = {}
        self._idle = threading.Condition(self._lock)
        self._closed = False
        if self._orchestrator is not None:  # one manager per orchestrator: it owns the manifests
            self._orchestrator.set_commit_handler(
                LeaderCommitter(self._storage, self.world_size, self.keep_last_n, self._metadata_for, self._committed)
            )
        self._writer = Writer(self._storage, self.rank, self.compression, self._orchestrator, self._written)
        self._janitor = Janitor(self._storage, self.keep_last_n, self._protected, self._swept)
        shutdown.register(self)
        if orchestrator is not None:
            orchestrator.before_close(lambda: self.close_before_exit(self.exit_timeout_s))

    @classmethod
    def from_config(cls, config: Any, storage_path: str | None = None, **overrides: Any) -> "CheckpointManager":
        """Build from a :class:`dtruntime.Config` ([storage] and [checkpoint] sections).

        Without ``storage_path``, the s3 backend uses ``s3://<bucket>/checkpoints``. Unlike
        the plain constructor, the backend and its endpoint and region come from [storage].
        """
        storage = config.storage
        options: dict[str, Any] = {}
        if storage.backend == "s3":
            if storage_path is None:
                if not storage.bucket:
                    raise ConfigError("storage.bucket", "is required for the s3 backend")
                storage_path = f"s3://{storage.bucket}/checkpoints"
            if storage.endpoint_url:
                options["endpoint_url"] = storage.endpoint_url
            if storage.region:
                options["client_kwargs"] = {"region_name": storage.region}
        if storage_path is None:
            raise ConfigError("storage_path", f"is required for the {storage.backend} backend")
        settings: dict[str, Any] = {"backend": storage.backend, "storage_options": options or None, "config": config}
        settings.update(overrides)
        return cls(storage_path, **settings)

    @property
    def storage_url(self) -> str:
        return self._storage.url

    # ----------------------------------------------------------------- saving

    async def save_async(self, data: bytes, step: int, **metadata: Any) -> SaveHandle:
        """Queue ``data`` as checkpoint ``step``; return once queued (await the handle for durability).

        Waits (asynchronously) while ``max_in_flight`` saves are queued or running.
        Raises CheckpointError at once for a bad step, a step already queued or known to
        be committed; other failures surface through the handle and :meth:`flush`.
        """
        job = self._admit(data, step, metadata)
        slot = self._slots.request()
        if not slot.done():
            try:
                await asyncio.wrap_future(slot)
            except asyncio.CancelledError:
                self._slots.withdraw(slot)
                raise
        return self._enqueue(job)

    def save_bytes(self, data: bytes, step: int, *, timeout: float | None = None, **metadata: Any) -> SaveHandle:
        """Synchronous :meth:`save_async`: blocks only while ``max_in_flight`` saves are busy
        (up to ``timeout`` seconds, then CheckpointError); returns a :class:`SaveHandle`."""
        job = self._admit(data, step, metadata)
        if not self._slots.acquire(timeout):
            raise CheckpointError(
                f"step {step}: no save slot free after {timeout} s ({self.max_in_flight} saves in flight)"
            )
        return self._enqueue(job)

    def save(self, state: Any, step: int, *, guard: Any = None, timeout: float | None = None,
             **metadata: Any) -> SaveHandle:
        """Copy ``state``'s tensors into a staging buffer; write the part in the background.

        ``state`` is a state dict: nested dicts, lists and tuples of tensors, numpy arrays
        and plain values (see :mod:`.tensors`); an unsupported leaf raises CheckpointError
        naming its path before anything is copied. The caller's time is a wait for a free
        slot (``max_in_flight`` saves in flight, up to ``timeout`` s) plus one copy of the
        tensors; the caller may modify them as soon as this returns.

        ``guard`` (the model and optimizer whose state this is: a module, an optimizer or
        a list of them) moves that copy out of the caller's time: ``save`` returns once
        the state is laid out, and the guarded modules' next forward and optimizers' next
        step wait until the copy is done (:mod:`.snapshot`). A tensor changed by anything
        else before its copy fails the save with CheckpointError naming it.

        The part is a pickle-free safetensors file; ``metadata`` (JSON values) goes into
        the manifest. Read it back with :meth:`load_state`.
        """
        from .snapshot import BackgroundSnapshots, guarded_objects
        from .staging import StagingPool

        layout.validate_step(step)
        guards = guarded_objects(guard)
        checked = check_metadata(metadata)
        with self._lock:
            self._check_acceptable(step)
            if self._staging is None:
                self._staging = StagingPool(self.max_in_flight)
            if guards and self._snapshots is None:
                self._snapshots = BackgroundSnapshots()
        if not self._slots.acquire(timeout):
            raise CheckpointError(
                f"step {step}: no save slot free after {timeout} s ({self.max_in_flight} saves in flight)"
            )
        try:
            staged = self._staging.prepare(state, copy_numpy=bool(guards))
        except BaseException:
            self._slots.release()
            raise
        job = SaveJob(step, None, checked, concurrent.futures.Future(), staged=staged)
        handle = self._enqueue(job)  # the writer waits for the copy (and samples it for "auto")
        if guards and not staged.on_gpu:
            self._snapshots.start(staged, guards, step)
            return handle
        try:
            staged.copy()
        except BaseException as exc:
            job.caller_saw_failure = True  # raised here: not reported again by flush/close
            staged.abort(exc)
            raise
        return handle

    def should_save(self, step: int) -> bool:
        """True when ``step`` is a positive multiple of ``interval_steps`` (``[checkpoint]
        interval_steps``): step 0, before any training, is never due."""
        layout.validate_step(step)
        return step > 0 and step % self.interval_steps == 0

    def maybe_save(self, state: Any, step: int, *, guard: Any = None, timeout: float | None = None,
                   **metadata: Any) -> SaveHandle | None:
        """:meth:`save` when :meth:`should_save` says ``step`` is due, else None."""
        return self.save(state, step, guard=guard, timeout=timeout, **metadata) if self.should_save(step) else None

    async def flush(self) -> None:
        """Wait until every save queued so far is committed (or failed) and its retention ran.

        Raises CheckpointError for failed saves whose handle did not already raise.
        """
        await asyncio.to_thread(self.flush_sync)

    def flush_sync(self, timeout: float | None = None) -> None:
        """Synchronous :meth:`flush`; TimeoutError if saves are still running after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            snapshot = set(self._outstanding)
            while snapshot & self._outstanding:
                busy = f"{len(snapshot & self._outstanding)} checkpoint saves still running"
                wait_for_progress(self._idle, deadline, busy)
        self._janitor.wait(deadline)
        self._raise_unreported()

    # ---------------------------------------------------------------- loading

    async def load(self, step: int | None = None, rank: int | None = None) -> bytes:
        """Bytes of ``step`` (None: the newest step that verifies), verified; see :meth:`load_bytes`."""
        return await asyncio.to_thread(self.load_bytes, step, rank)

    async def list_checkpoints(self, verify: bool = False) -> list[int]:
        """Committed steps, ascending; see :meth:`list_checkpoints_sync`."""
        return await asyncio.to_thread(self.list_checkpoints_sync, verify)

    def load_bytes(self, step: int | None = None, rank: int | None = None) -> bytes:
        """Read and verify ``rank``'s part (None: this manager's rank) of ``step``.

        ``step=None`` loads the newest committed step whose every part verifies (so every
        rank of a job resumes from the same step), logging a WARNING naming each newer step
        skipped and why. A committed step asked for by number is loaded as it is, never
        another one. The one exception keeps the original API's ``load(step=0)  # Load
        latest`` working: when step 0 is not committed, ``step=0`` loads what ``None``
        would, with an INFO log. (So a program that saved step 0 and means "latest" by 0
        gets step 0 while retention keeps it.)

        Raises :class:`CheckpointNotFoundError` (a ``FileNotFoundError`` too) when no
        step, or not the step asked for, is committed; CheckpointError naming step, rank
        and file when the part is missing, the wrong size or fails its CRC, when the
        manifest has no such rank or is damaged, or, with no step, when no step verifies.
        """
        return bytes(self._load(step, rank, as_buffer=False))

    def _loaded(self, step: int, data: Any, started: float) -> Any:
        """Record a verified load in the orchestrator's metrics, if any; returns ``data``
        (bytes, or a buffer with ``as_buffer``)."""
        if self._metrics is not None:
            size = data.nbytes if isinstance(data, memoryview) else len(data)
            self._metrics.checkpoint_done("load", step, size, time.perf_counter() - started, self._storage.url)
        return data

    def load_state(
        self,
        step: int | None = None,
        *,
        rank: int | None = None,
        map_location: Any = "cpu",
        weights_only: bool = True,
    ) -> Any:
        """The state dict :meth:`save` saved as ``step`` (chosen as in :meth:`load_bytes`).

        A tensor-native part is read into one aligned buffer, verified (size and CRC-32C,
        checksummed while it is read) and each tensor is its own storage over that
        buffer's bytes: no copy after the read. (One tensor kept alive keeps the whole buffer alive; ``clone()``
        what you keep of a partial load.) ``map_location`` other than ``"cpu"`` moves the
        tensors there (a copy). Parts saved by earlier versions are ``torch.save``
        pickles: they load with ``torch.load(weights_only=weights_only)``.
        """
        import torch

        from .tensors import is_tensor_part, load_state

        buffer = self._load(step, rank, as_buffer=True)
        if not is_tensor_part(buffer):
            return torch.load(io.BytesIO(buffer), map_location=map_location, weights_only=weights_only)
        state = load_state(buffer, f"checkpoint step {step if step is not None else 'newest'} under {self._storage.url}")
        if map_location in (None, "cpu") or (isinstance(map_location, torch.device) and map_location.type == "cpu"):
            return state
        return _map_tensors(state, lambda tensor: tensor.to(map_location))

    def _load(self, step: int | None, rank: int | None, as_buffer: bool) -> Any:
        wanted = self.rank if rank is None else layout.validate_rank(rank)
        started = time.perf_counter()
        if step is None:
            newest, data = self._load_newest(wanted, as_buffer)
            return self._loaded(newest, data, started)
        try:
            checked = reads.read_step(self._storage, layout.validate_step(step), wanted, verify_all=False, as_buffer=as_buffer)
            return self._loaded(step, checked, started)
        except CheckpointNotFoundError:
            if step != 0:
                raise
        newest, data = self._load_newest(wanted, as_buffer)
        log.info("checkpoint step 0 is not committed under %s: load(step=0) loaded the newest step, %d, "
                 "as the original API's 'load latest' did", self._storage.url, newest)
        return self._loaded(newest, data, started)

    def list_checkpoints_sync(self, verify: bool = False) -> list[int]:
        """Committed steps, ascending: those whose manifest exists and decodes.

        ``verify=True`` lists only the loadable ones, whose every part verifies (this reads
        every part of every step). A step listed without ``verify`` may fail to load.
        """
        steps = []
        for step in reads.scan(self._storage).committed:
            try:
                if verify:
                    reads.read_step(self._storage, step, None, verify_all=True)
                else:
                    reads.read_manifest(self._storage, step)
            except CheckpointError:
                continue
            steps.append(step)
        return steps

    def read_manifest(self, step: int | None = None) -> Manifest:
        """The decoded manifest of ``step`` (None: newest): parts, ``metadata``, ``created_unix``."""
        return reads.read_manifest(self._storage, self._resolve(step))

    def newest_valid_step(self) -> int | None:
        """The newest committed step whose every part verifies, or None. Reads the data."""
        for step in reversed(reads.scan(self._storage).committed):
            try:
                reads.read_step(self._storage, step, None, verify_all=True)
            except CheckpointError as exc:
                log.warning("checkpoint step %d does not verify: %s", step, exc)
                continue
            return step
        return None

    # -------------------------------------------------------------- lifecycle

    def close(self, timeout: float | None = None) -> None:
        """Finish queued saves, stop the writer thread; raise for failures no handle reported. Idempotent."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.stop()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._writer.join(timeout):
            raise CheckpointTimeout(f"checkpoint writer still busy after {timeout} s")
        with self._lock:  # with an orchestrator, written parts may still await their commit
            while self._outstanding:
                wait_for_progress(self._idle, deadline, f"{len(self._outstanding)} checkpoint steps still uncommitted")
        if self._snapshots is not None:
            self._snapshots.remove_hooks()  # the writer consumed every copy
        self._janitor.stop()  # after every request: the janitor finishes them first
        if not self._janitor.join(None if deadline is None else max(0.0, deadline - time.monotonic())):
            raise CheckpointTimeout(f"checkpoint retention still running after {timeout} s")
        shutdown.unregister(self)
        self._raise_unreported()

    def close_before_exit(self, timeout: float) -> None:
        """:meth:`close` within ``timeout`` s, for an exit: of the interpreter (the
        :mod:`.shutdown` handler) or of the orchestrator this manager is attached to.

        Never raises. Logs an ERROR naming each step still queued, being written or
        awaiting its commit when the time is up (it will not exist), and one for failed
        saves no handle reported.
        """
        try:
            self.close(timeout)
        except TimeoutError:
            with self._lock:
                lost = sorted(self._pending)
            retaining = self._janitor.busy
            if lost:
                log.error(
                    "checkpoint step(s) %s under %s were not durable %s s after exit began and will not exist "
                    "(wait for the save handles or close the manager before exiting, or raise "
                    "[checkpoint] exit_timeout_s)", lost, self._storage.url, timeout,
                )
            elif retaining:
                log.warning("checkpoint retention under %s was still running at exit: old steps may remain",
                            self._storage.url)
        except CheckpointError as exc:
            log.error("checkpoint saves under %s failed before exit: %s", self._storage.url, exc)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._close_on_exit(exc_type is not None)

    async def __aenter__(self) -> "CheckpointManager":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await asyncio.to_thread(self._close_on_exit, exc_type is not None)

    def __repr__(self) -> str:
        return f"CheckpointManager({self._storage.url!r}, keep_last_n={self.keep_last_n}, compression={self.compression!r})"

    def _close_on_exit(self, unwinding: bool) -> None:
        if not unwinding:
            self.close()
            return
        try:
            self.close()
        except CheckpointError as exc:  # do not mask the exception already propagating
            log.error("checkpoint saves failed while unwinding: %s", exc)

    # ------------------------------------------------------------- internals

    def _admit(self, data: Any, step: Any, metadata: Mapping[str, Any]) -> SaveJob:
        """Validate a save request in the caller's thread (no IO, no copy of ``bytes``)."""
        layout.validate_step(step)
        if isinstance(data, bytes):
            payload: Buffer = data
        elif isinstance(data, (bytearray, memoryview)):
            payload = bytes(data)  # the caller may mutate it after we return
        else:
            raise ArgumentTypeError(f"checkpoint data must be bytes, bytearray or memoryview, not {type(data).__name__}")
        job = SaveJob(step, payload, check_metadata(metadata), concurrent.futures.Future())
        with self._lock:
            self._check_acceptable(step)
        return job

    def _check_acceptable(self, step: int) -> None:
        if self._closed:
            raise CheckpointError(f"CheckpointManager for {self._storage.url} is closed")
        if step in self._pending:
            raise CheckpointError(f"step {step} is already queued for saving")
        if step in self._known_committed:
            raise CheckpointError(f"step {step} already exists (committed) under {self._storage.url}")

    def _enqueue(self, job: SaveJob) -> SaveHandle:
        """Queue ``job``; the caller holds a slot, which is given back if the job is refused."""
        with self._lock:
            try:
                self._check_acceptable(job.step)
            except CheckpointError:
                self._slots.release()
                if job.staged is not None:
                    job.staged.release()
                raise
            self._pending.add(job.step)
            if self._orchestrator is not None:
                self._metadata[job.step] = job.metadata
            self._outstanding.add(job.future)
            self._writer.submit(job)
        return SaveHandle(job.step, job.future, self._failure_seen)

    def _written(self, job: SaveJob, outcome: Outcome) -> None:
        """The writer is done with ``job`` (called in the writer thread)."""
        if isinstance(outcome, concurrent.futures.Future):
            # The part is durable and reported; the leader's verdict completes the job.
            self._slots.release()
            outcome.add_done_callback(lambda verdict, job=job: self._on_verdict(job, verdict))
        else:
            self._finish(job, outcome, release_slot=True)

    def _on_verdict(self, job: SaveJob, verdict: concurrent.futures.Future[None]) -> None:
        """Runs where the orchestrator settles the commit (its driver thread): no IO here."""
        error = verdict.exception()
        if error is None:
            seconds = time.perf_counter() - job.started
            self._finish(job, SaveResult(job.step, job.raw_size, job.stored_size, job.codec, seconds))
        else:
            wrapped = error if isinstance(error, CheckpointError) else CheckpointError(f"step {job.step}: {error}")
            self._finish(job, wrapped)

    def _finish(self, job: SaveJob, outcome: SaveResult | CheckpointError, release_slot: bool = False) -> None:
        with self._lock:
            self._pending.discard(job.step)
            self._metadata.pop(job.step, None)
            if isinstance(outcome, CheckpointError) and not job.caller_saw_failure:
                self._unreported[job.future] = (job.step, outcome)
            else:
                self._known_committed.add(job.step)
        if release_slot:
            self._slots.release()
        if isinstance(outcome, CheckpointError):
            job.future.set_exception(outcome)
        else:
            if self._metrics is not None:
                self._metrics.checkpoint_done("write", outcome.step, outcome.raw_size, outcome.seconds,
                                              self._storage.url)
            # The handle completes at the commit; the janitor deletes old steps meanwhile.
            # With an orchestrator, retention is the leader's, after each commit.
            if self._orchestrator is None:
                self._janitor.request(job.step)
            job.future.set_result(outcome)
        with self._lock:
            self._outstanding.discard(job.future)
            self._idle.notify_all()

    def _metadata_for(self, step: int) -> dict[str, Any]:
        with self._lock:
            return dict(self._metadata.get(step, {}))

    def _committed(self, step: int) -> None:
        """The leader committer saw ``step`` committed (called in the commit thread)."""
        with self._lock:
            self._known_committed.add(step)

    def _protected(self, just_committed: int) -> set[int]:
        """What the janitor must not delete: ``just_committed`` and every step queued or being written."""
        with self._lock:
            return {just_committed} | self._pending

    def _swept(self, view: StorageView, plan: RetentionPlan) -> None:
        """The janitor applied ``plan`` to ``view``: the steps known committed follow."""
        with self._lock:
            self._known_committed = (self._known_committed | set(view.committed)) - set(plan.delete_committed)

    def _load_newest(self, rank: int, as_buffer: bool) -> tuple[int, Any]:
        """The newest committed step whose every part verifies, and ``rank``'s part of it."""
        return reads.newest_that_verifies(
            self._storage, lambda step: reads.read_step(self._storage, step, rank, verify_all=True, as_buffer=as_buffer)
        )

    def _resolve(self, step: int | None) -> int:
        if step is not None:
            return layout.validate_step(step)
        newest = reads.scan(self._storage).newest_committed
        if newest is None:
            raise CheckpointNotFoundError(f"no committed checkpoint under {self._storage.url}")
        return newest

    def _failure_seen(self, future: concurrent.futures.Future[SaveResult]) -> None:
        with self._lock:
            self._unreported.pop(future, None)

    def _raise_unreported(self) -> None:
        """Raise one CheckpointError for failed saves no handle has reported yet."""
        with self._lock:
            failures, self._unreported = list(self._unreported.values()), {}
        if failures:
            summary = "; ".join(f"step {step}: {error}" for step, error in failures)
            raise CheckpointError(f"{len(failures)} checkpoint save(s) failed: {summary}") from failures[0][1]


def _map_tensors(value: Any, function: Callable[[Any], Any]) -> Any:
    """``value`` with ``function`` applied to every tensor in its nested containers."""
    import torch

    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, function) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_tensors(item, function) for item in value]
    if isinstance(value, tuple):
        return tuple(_map_tensors(item, function) for item in value)
    return value
