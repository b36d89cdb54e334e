"""What a save gives back: a :class:`SaveHandle` at once, a :class:`SaveResult` once committed.

A handle completes when its step is durable and committed, or fails with a
CheckpointError; a failure seen through a handle counts as reported, so the manager's
``flush`` and ``close`` raise only for failures no handle has shown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError


@dataclass(frozen=True)
class SaveResult:
    """A committed save. ``seconds`` is the writer's time from start to commit."""

    step: int
    raw_size: int
    stored_size: int
    codec: str
    seconds: float

    @property
    def throughput_mib_s(self) -> float:
        """Effective throughput: uncompressed MiB per second of writer time."""
        return self.raw_size / 2**20 / self.seconds if self.seconds > 0 else float("inf")


class SaveHandle:
    """A queued save. ``result()`` / ``await handle`` return :class:`SaveResult` once the
    step is durable and committed, or raise :class:`CheckpointError`. A failure seen
    here counts as reported: :meth:`CheckpointManager.flush` and ``close`` raise only
    for failures nobody has seen through a handle."""

    __slots__ = ("step", "_future", "_on_failure_seen")

    def __init__(
        self,
        step: int,
        future: concurrent.futures.Future[SaveResult],
        on_failure_seen: Callable[[concurrent.futures.Future[SaveResult]], None],
    ) -> None:
        self.step = step
        self._future = future
        self._on_failure_seen = on_failure_seen

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> SaveResult:
        """Wait up to ``timeout`` seconds (``concurrent.futures.TimeoutError`` after that)."""
        try:
            return self._future.result(timeout)
        except CheckpointError:
            self._on_failure_seen(self._future)
            raise

    def __await__(self) -> Generator[Any, None, SaveResult]:
        return self._wait().__await__()

    async def _wait(self) -> SaveResult:
        try:
            return await asyncio.wrap_future(self._future)
        except CheckpointError:
            self._on_failure_seen(self._future)
            raise

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<SaveHandle step={self.step} {state}>"
