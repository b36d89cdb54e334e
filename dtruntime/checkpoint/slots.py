"""A FIFO counting semaphore usable from threads and from asyncio.

``request()`` returns a ``concurrent.futures.Future`` that completes when a slot is
granted (at once when one is free), so asyncio code awaits it with
``asyncio.wrap_future`` and threads wait on it with a timeout. Slots are granted in
request order. A waiter that gives up calls :meth:`withdraw`, which either removes the
pending request or, if the slot was already granted, gives it back: no slot is ever lost.
"""

from __future__ import annotations

from ..errors import ArgumentError, CheckpointError

import threading
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout


class InFlightSlots:
    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ArgumentError(f"capacity must be a positive integer, not {capacity!r}")
        self.capacity = capacity
        self._in_use = 0
        self._waiters: deque[Future[None]] = deque()
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    def request(self) -> Future[None]:
        """A future that completes when the caller holds a slot."""
        future: Future[None] = Future()
        with self._lock:
            if self._in_use < self.capacity and not self._waiters:
                self._in_use += 1
                future.set_running_or_notify_cancel()
                future.set_result(None)
            else:
                self._waiters.append(future)
        return future

    def acquire(self, timeout: float | None = None) -> bool:
        """Block until a slot is held (True) or ``timeout`` seconds pass (False)."""
        future = self.request()
        try:
            future.result(timeout)
            return True
        except FutureTimeout:
            self.withdraw(future)
            return False

    def withdraw(self, future: Future[None]) -> None:
        """Abandon ``future``: drop it if still waiting, give its slot back if granted."""
        with self._lock:
            if future.cancel():
                return
            if future.done() and not future.cancelled():
                self._release_locked()

    def release(self) -> None:
        with self._lock:
            self._release_locked()

    def _release_locked(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.set_running_or_notify_cancel():
                waiter.set_result(None)  # the slot passes straight to the next waiter
                return
        if self._in_use == 0:
            raise CheckpointError("release() without a held slot (a bug in the checkpoint writer)")
        self._in_use -= 1
