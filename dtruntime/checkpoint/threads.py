"""What the manager's writer and janitor threads share: a daemon thread fed by a FIFO
queue, and a condition wait bounded by a deadline."""

from __future__ import annotations

import queue
import threading
import time
from typing import Generic, TypeVar

from ..errors import CheckpointTimeout

T = TypeVar("T")


class QueueThread(Generic[T]):
    """A daemon thread named ``name`` running ``self._run()``, which takes items from
    ``self._queue`` until it gets None (:meth:`stop`). Items are handled in the order
    they were put, every item put before :meth:`stop` included.

    A subclass calls ``super().__init__(name)`` last in its own ``__init__``: the thread
    starts there, and ``_run`` may use everything the subclass set up before.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop once the items already put are handled (a second call changes nothing)."""
        self._queue.put(None)

    def join(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` s for the thread to end; whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def wait_for_progress(condition: threading.Condition, deadline: float | None, busy: str) -> None:
    """Wait once on ``condition`` (the caller holds it) for the next notification.

    ``deadline`` is a ``time.monotonic()`` value (None: no limit); once it has passed,
    raise :class:`CheckpointTimeout` "<busy> after the timeout" instead. Callers loop
    until what they wait for is true.
    """
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is not None and remaining <= 0:
        raise CheckpointTimeout(f"{busy} after the timeout")
    condition.wait(remaining)
