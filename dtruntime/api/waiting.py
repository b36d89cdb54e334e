"""Long waits say what they wait for, at a bounded rate.

A blocking barrier, agreement or registration that has not ended after ``first_s``
seconds logs one WARNING naming whom it is still waiting for, then one every
``every_s`` seconds (``[watchdog] still_waiting_first_s`` / ``still_waiting_every_s``):
a wait of an hour logs about 120 lines, not one per probe. ``describe(elapsed)`` builds
the line when it is due (it may ask the driver; it is never called on the fast path).
A wait that ends sooner logs nothing and costs one ``Future.result`` call.

Edge cases: the waited future may itself fail with a ``TimeoutError`` subclass
(``BarrierTimeout``), which is told apart from the slice timeout by ``future.done()``;
``KeyboardInterrupt`` interrupts the wait as it interrupts ``Future.result``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("dtruntime.wait")


class WaitLog:
    """When the next "still waiting" line of one wait is due."""

    def __init__(self, first_s: float, every_s: float, describe: Callable[[float], str]) -> None:
        self.started = time.monotonic()
        self._next = self.started + first_s
        self._every = every_s
        self._describe = describe

    def seconds_to_next(self) -> float:
        return max(0.0, self._next - time.monotonic())

    def maybe_log(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._every
            try:
                line = self._describe(now - self.started)
            except Exception as exc:  # noqa: BLE001 - describing must never break the wait
                line = f"still waiting after {now - self.started:.0f} s (could not say for whom: {exc})"
            log.warning("%s", line)


def wait_logged(
    future: "Future[T]", timeout: float | None, first_s: float, every_s: float, describe: Callable[[float], str],
) -> T:
    """``future.result(timeout)``, logging ``describe(elapsed)`` while it takes long."""
    waits = WaitLog(first_s, every_s, describe)
    deadline = None if timeout is None else waits.started + timeout
    while True:
        slice_s = waits.seconds_to_next()
        if deadline is not None:
            slice_s = min(slice_s, max(0.0, deadline - time.monotonic()))
        try:
            return future.result(slice_s)
        except FutureTimeout:
            if future.done():  # the future's own error is a TimeoutError (BarrierTimeout)
                raise
            if deadline is not None and time.monotonic() >= deadline:
                raise
        waits.maybe_log()


async def await_logged(
    future: "Future[T]", first_s: float, every_s: float, describe: Callable[[float], str],
) -> T:
    """``await`` ``future`` (no timeout of its own), logging like :func:`wait_logged`."""
    waits = WaitLog(first_s, every_s, describe)
    wrapped = asyncio.wrap_future(future)
    try:
        while True:
            done, _ = await asyncio.wait({wrapped}, timeout=waits.seconds_to_next())
            if done:
                return wrapped.result()
            waits.maybe_log()
    except asyncio.CancelledError:
        wrapped.cancel()  # as awaiting the wrapped future itself would
        raise
