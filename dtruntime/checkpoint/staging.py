"""Staging: the one copy a tensor-native save makes in the caller's thread.

:meth:`StagingPool.stage` lays a state dict out (:func:`.tensors.plan_state`), takes a
staging buffer from the pool and copies every tensor into its place in the part's body,
so the caller may change its tensors as soon as ``stage`` returns. Serialisation of the
small header is done during planning; checksums and IO run later in the writer thread,
which reads the staged buffer and gives it back with :meth:`StagedPart.release`.

Buffers are reused: a released buffer serves the next save that fits in it (the first
save of a size pays for the page faults of a fresh allocation, later ones only for the
copy). At most one buffer per save in flight exists, so memory is bounded by
``max_in_flight`` x the largest part. A buffer larger than twice the need is not reused
for a small save, and is dropped when a larger one replaces it.

CUDA (written for, not exercised on this CPU-only machine): when any tensor is on a GPU
and CUDA is available, buffers are pinned and each device's tensors are copied with
``non_blocking=True`` on a dedicated copy stream that first waits for the caller's
current stream; the caller's stream then waits for the copy stream (a GPU-side wait, the
caller's thread does not block), so the caller's later kernels cannot change a tensor
before its copy is done. The writer thread waits for the copies' events before reading.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from .tensors import StatePlan, plan_state


@dataclass
class StagedPart:
    """A staged part: ``header`` + the first ``plan.body_size`` bytes of ``buffer``."""

    plan: StatePlan
    buffer: torch.Tensor
    _pool: "StagingPool"
    _events: list[Any] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.plan.header) + self.plan.body_size

    def wait_copied(self) -> None:
        """Block until every device-to-host copy has landed (no-op on CPU)."""
        for event in self._events:
            event.synchronize()
        self._events.clear()

    def chunks(self) -> list[memoryview]:
        """The part's bytes as two buffers (header, body), after :meth:`wait_copied`."""
        self.wait_copied()
        body = memoryview(self.buffer.numpy()).cast("B")[: self.plan.body_size]
        return [memoryview(self.plan.header), body]

    def release(self) -> None:
        """Give the buffer back to the pool (idempotent); the chunks must not be used after."""
        buffer, self.buffer = self.buffer, None  # type: ignore[assignment]
        if buffer is not None:
            self._pool._give_back(buffer)


class StagingPool:
    """Reusable staging buffers for one manager; thread-safe."""

    def __init__(self, keep: int) -> None:
        self._keep = keep  # buffers kept free: the manager's max_in_flight
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()
        self._streams: dict[torch.device, Any] = {}

    def stage(self, state: Any) -> StagedPart:
        """Copy ``state``'s tensors into a staging buffer; CheckpointError for an unsupported leaf."""
        plan = plan_state(state)
        on_gpu = any(t.device.type == "cuda" for t in plan.sources)
        buffer = self._take(plan.body_size, pinned=on_gpu and torch.cuda.is_available())
        staged = StagedPart(plan, buffer, self)
        try:
            if on_gpu:
                staged._events = self._copy_from_gpus(plan, buffer)
            else:
                for entry, source in zip(plan.entries, plan.sources):
                    _target(buffer, entry).copy_(source)
        except BaseException:
            staged.release()
            raise
        return staged

    def _copy_from_gpus(self, plan: StatePlan, buffer: torch.Tensor) -> list[Any]:
        events = {}
        for entry, source in zip(plan.entries, plan.sources):
            target = _target(buffer, entry)
            if source.device.type != "cuda":
                target.copy_(source)
                continue
            device = source.device
            stream = self._streams.get(device)
            if stream is None:
                stream = self._streams[device] = torch.cuda.Stream(device)
            if device not in events:
                stream.wait_stream(torch.cuda.current_stream(device))
                events[device] = None
            with torch.cuda.stream(stream):
                target.copy_(source, non_blocking=True)
            source.record_stream(stream)
        recorded = []
        for device in events:
            stream = self._streams[device]
            event = torch.cuda.Event()
            event.record(stream)
            torch.cuda.current_stream(device).wait_stream(stream)
            recorded.append(event)
        return recorded

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
