"""Saves still pending at interpreter exit: made durable within a bound, or named in an error.

Every open :class:`~.manager.CheckpointManager` is registered here and unregistered by
its ``close()``. One ``atexit`` handler, installed with the first registration, closes
every manager still open, each within its own ``exit_timeout_s`` counted from the
start of the handler (so the whole wait is the largest bound, not the sum). A manager
logs an ERROR naming each step that will not exist when its bound runs out, and each
failed save nobody saw (see ``CheckpointManager.close_before_exit``).

Interplay with the rest of interpreter shutdown (CPython runs ``atexit`` handlers LIFO,
after joining non-daemon threads and before stopping daemon ones):

* The handler is installed after ``logging`` (imported first), so it runs before
  ``logging.shutdown`` and its messages still reach the handlers.
* The writer threads are daemon threads: they keep running while the handler waits.
* ``concurrent.futures`` shuts its pools down *before* any ``atexit`` handler, which
  stops an orchestrator's commit thread: a multi-rank step still uncommitted at exit
  cannot be committed then, and is reported after the bound. Close the orchestrator
  (``close_sync()`` flushes the managers attached to it first) or the manager before
  the script ends.

An exit by an uncaught exception runs the same handler. ``os._exit``, SIGKILL and an
unhandled SIGTERM run no handler at all.
"""

from __future__ import annotations

import atexit
import threading
import time
from typing import Protocol


class Closable(Protocol):
    exit_timeout_s: float

    def close_before_exit(self, timeout: float) -> None:
        """Close within ``timeout`` seconds; log, never raise, what could not be saved."""
        ...


_lock = threading.Lock()
_open: dict[int, Closable] = {}
_installed = False


def register(manager: Closable) -> None:
    """Close ``manager`` at interpreter exit unless it is closed before."""
    global _installed
    with _lock:
        _open[id(manager)] = manager
        if not _installed:
            atexit.register(close_all)
            _installed = True


def unregister(manager: Closable) -> None:
    with _lock:
        _open.pop(id(manager), None)


def close_all() -> None:
    """Close every registered manager, each within its ``exit_timeout_s`` from now."""
    started = time.monotonic()
    with _lock:
        managers = list(_open.values())
    for manager in managers:
        manager.close_before_exit(max(0.0, started + manager.exit_timeout_s - time.monotonic()))
