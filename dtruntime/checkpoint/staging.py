"""Staging: the one copy a tensor-native save makes, in the caller's thread (or, for a
guarded save, in a snapshot thread: :mod:`.snapshot`).

:meth:`StagingPool.prepare` lays a state dict out (:func:`.tensors.plan_state`: every
leaf checked, the small header serialised) and takes a staging buffer from the pool;
:meth:`StagedPart.copy` then copies every tensor into its place in the part's body, in
body order, publishing its progress. The manager queues the part *before* the copy, so
the writer thread can already sample the first bytes (``compression="auto"``); it writes
the body once all of it is copied. (Streaming the body out while the caller still
copied it measured slower on both counts in back-to-back runs on 2 cores: on 256 MiB the
caller's copy took 2.3x a bare ``copy_`` and the save reached durable at 82 % of raw
write+fsync throughput, against 1.1x and 95 % writing after the copy; the copy and the
page-cache write compete for memory bandwidth. See docs/figures.md.) The caller may
change its tensors once ``copy`` returns. A failed copy (:meth:`StagedPart.abort`) fails
the writer's wait with CheckpointError. The writer gives the buffer back with
:meth:`StagedPart.release`.

Buffers are reused: a released buffer serves the next save that fits in it (the first
save of a size pays for the page faults of a fresh allocation, later ones only for the
copy). At most one buffer per save in flight exists, so memory is bounded by
``max_in_flight`` x the largest part. A buffer larger than twice the need is not reused
for a small save; the pool keeps at most ``keep`` free buffers, the largest.

CUDA (written for, not exercised on this CPU-only machine): when any tensor is on a GPU
and CUDA is available, buffers are pinned and each device's tensors are copied with
``non_blocking=True`` on a dedicated copy stream that first waits for the caller's
current stream; the caller's stream then waits for the copy stream (a GPU-side wait, the
caller's thread does not block), so the caller's later kernels cannot change a tensor
before its copy is done. The writer waits for the copies' events, then writes the body.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import torch

from ..errors import CheckpointError
from .tensors import StatePlan, plan_state


class StagedPart:
    """A staged part: ``plan.header`` + the first ``plan.body_size`` bytes of ``buffer``.

    Progress invariant: body bytes ``[0, copied)`` hold their final values (the copy
    goes in body order); ``copied`` only grows.
    """

    def __init__(self, plan: StatePlan, buffer: torch.Tensor, pool: "StagingPool") -> None:
        self.plan = plan
        self.buffer = buffer
        self._pool = pool
        self._events: list[Any] = []
        self._copied = 0
        self._error: BaseException | None = None
        self._copying = False
        self._settled = False  # the copy ended (done or failed), or the part was aborted or released
        self._progress = threading.Condition()
        # Each source's version counter now: a tensor whose counter moved before its copy
        # finished fails the save instead of saving a torn state (what bumps it: .snapshot).
        self._versions = tuple(source._version for source in plan.sources)

    @property
    def size(self) -> int:
        return len(self.plan.header) + self.plan.body_size

    def copy(self, background: bool = False) -> None:
        """Copy every source tensor into the buffer; see the module. In the caller's thread
        a CPU tensor is copied with ``copy_`` (torch's intra-op threads, as the caller set
        them); in a snapshot thread (``background``, :mod:`.snapshot`) with one
        ``memmove`` per dense tensor (:func:`_copy_cpu`). Nothing is copied when the writer
        has already given the part up (released it). CheckpointError, and the copy stops,
        when a source's version counter moved since the part was prepared."""
        with self._progress:
            if self.buffer is None:
                return
            self._copying = True
        try:
            order = sorted(range(len(self.plan.entries)), key=lambda i: self.plan.entries[i].offset)
            if self.on_gpu:
                pairs = [(self.plan.entries[i], self.plan.sources[i]) for i in order]
                events = self._pool._copy_from_gpus(pairs, self.buffer)
                with self._progress:
                    self._events = events
                    self._progress.notify_all()
                return
            for i in order:
                entry, source = self.plan.entries[i], self.plan.sources[i]
                if background:
                    _copy_cpu(_target(self.buffer, entry), source)
                else:
                    _target(self.buffer, entry).copy_(source)
                if source._version != self._versions[i]:
                    raise CheckpointError(
                        f"{entry.name!r} changed while its snapshot was being taken (a background save copies "
                        "after save() returned: name the module or optimizer that changes it in guard=, or "
                        "save without guard to copy before save() returns)"
                    )
                with self._progress:
                    self._copied = entry.offset + entry.nbytes
                    self._progress.notify_all()
        finally:
            with self._progress:
                self._copying = False
                self._settled = True
                self._progress.notify_all()

    def abort(self, error: BaseException) -> None:
        """The copy failed: the stream fails too (CheckpointError naming ``error``)."""
        with self._progress:
            self._error = error
            self._settled = True
            self._progress.notify_all()

    @property
    def on_gpu(self) -> bool:
        """Whether any source tensor is on a GPU (the copy is then asynchronous already)."""
        return _on_gpu(self.plan.sources)

    def wait_settled(self) -> None:
        """Block until the copy has ended, successfully or not, or the part was aborted or
        released: after this, nothing reads the source tensors any more."""
        with self._progress:
            while not self._settled:
                self._progress.wait()

    def prefix(self, size: int) -> memoryview:
        """The first ``size`` body bytes (fewer if the body is shorter), once copied."""
        size = min(size, self.plan.body_size)
        self._wait_for(size)
        return self._body()[:size]

    def chunks(self) -> list[memoryview]:
        """The whole part as two buffers (header, body), once all of it is copied."""
        self._wait_for(self.plan.body_size)
        return [memoryview(self.plan.header), self._body()]

    def release(self) -> None:
        """Give the buffer back to the pool (idempotent) once no copy into it is running
        (nor, on GPU, pending); nothing of it may be used after."""
        with self._progress:
            while self._copying:
                self._progress.wait()
            buffer, self.buffer = self.buffer, None  # type: ignore[assignment]
            events, self._events = self._events, []
            self._settled = True
            self._progress.notify_all()
        for event in events:
            event.synchronize()
        if buffer is not None:
            self._pool._give_back(buffer)

    def _body(self) -> memoryview:
        return memoryview(self.buffer.numpy()).cast("B")[: self.plan.body_size]

    def _wait_for(self, size: int) -> int:
        """Wait until at least ``size`` body bytes are copied; return how many are.
        (Only the writer thread calls this.)"""
        with self._progress:
            while self._copied < size and self._error is None and not self._events:
                self._progress.wait()
            events, self._events = self._events, []
        for event in events:  # GPU copies: the whole body lands when its events complete
            event.synchronize()
        with self._progress:
            if events:
                self._copied = self.plan.body_size
            if self._error is not None:
                raise CheckpointError(f"copying the state into the staging buffer failed: {self._error!r}")
            return self._copied


class StagingPool:
    """Reusable staging buffers for one manager; thread-safe."""

    def __init__(self, keep: int) -> None:
        self._keep = keep  # buffers kept free: the manager's max_in_flight
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()
        self._streams: dict[torch.device, Any] = {}

    def prepare(self, state: Any, copy_numpy: bool = False) -> StagedPart:
        """Lay ``state`` out and take a buffer for it (no tensor data read yet, except the
        numpy arrays' with ``copy_numpy``); CheckpointError for an unsupported leaf."""
        plan = plan_state(state, copy_numpy)
        pinned = _on_gpu(plan.sources) and torch.cuda.is_available()
        return StagedPart(plan, self._take(plan.body_size, pinned=pinned), self)

    def stage(self, state: Any) -> StagedPart:
        """:meth:`prepare` and copy at once (the buffer goes back to the pool on a failure)."""
        staged = self.prepare(state)
        try:
            staged.copy()
        except BaseException:
            staged.release()
            raise
        return staged

    def _copy_from_gpus(self, pairs: list[tuple[Any, torch.Tensor]], buffer: torch.Tensor) -> list[Any]:
        devices: list[torch.device] = []
        for entry, source in pairs:
            target = _target(buffer, entry)
            if source.device.type != "cuda":
                target.copy_(source)
                continue
            device = source.device
            stream = self._streams.get(device)
            if stream is None:
                stream = self._streams[device] = torch.cuda.Stream(device)
            if device not in devices:
                stream.wait_stream(torch.cuda.current_stream(device))
                devices.append(device)
            with torch.cuda.stream(stream):
                target.copy_(source, non_blocking=True)
            source.record_stream(stream)
        events = []
        for device in devices:
            stream = self._streams[device]
            event = torch.cuda.Event()
            event.record(stream)
            torch.cuda.current_stream(device).wait_stream(stream)
            events.append(event)
        return events

    def _take(self, size: int, pinned: bool) -> torch.Tensor:
        with self._lock:
            fitting = [b for b in self._free if size <= b.numel() <= max(2 * size, 1 << 20) and b.is_pinned() == pinned]
            if fitting:
                best = min(fitting, key=lambda b: b.numel())
                self._free.remove(best)
                return best
        return torch.empty(size, dtype=torch.uint8, pin_memory=pinned)

    def _give_back(self, buffer: torch.Tensor) -> None:
        with self._lock:
            self._free.append(buffer)
            if len(self._free) > self._keep:  # keep the largest ones
                self._free.sort(key=lambda b: b.numel())
                del self._free[0]


def _target(buffer: torch.Tensor, entry: Any) -> torch.Tensor:
    return buffer[entry.offset : entry.offset + entry.nbytes].view(entry.dtype).view(entry.shape)


def _on_gpu(sources: tuple[torch.Tensor, ...]) -> bool:
    return any(source.device.type == "cuda" for source in sources)


def _copy_cpu(target: torch.Tensor, source: torch.Tensor) -> None:
    """``target.copy_(source)`` for a CPU ``source`` without torch's intra-op threads, for
    a snapshot thread that runs beside the training loop: a dense source (contiguous, no
    lazy conjugate or negative bit) is one ``memmove`` (glibc's, GIL released), anything
    else ``copy_``. A second OpenMP team beside the loop's would contend with it: measured
    on 2 cores with the other core busy, ``copy_`` of 240 MiB took 119 ms against 20 ms
    for ``memmove``. (On an idle machine ``copy_`` with two threads is the faster one,
    31 against 55 ms for 1 GiB, which is why the caller's own copy keeps it.)"""
    if source.is_contiguous() and not source.is_conj() and not source.is_neg():
        nbytes = source.numel() * source.element_size()
        if nbytes:
            ctypes.memmove(target.data_ptr(), source.data_ptr(), nbytes)
    else:
        target.copy_(source)
