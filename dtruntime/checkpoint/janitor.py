"""The janitor thread: apply retention after single-rank commits, off the writer's path.

Deleting a large step takes a while (0.2 s), which the next save should not wait for, so
the writer asks (:meth:`Janitor.request`) and goes on. Requests queued while a sweep runs
are handled in one pass that protects only the latest commit, which leaves what one
pass per commit would.

Invariant: a step being written is never deleted. ``protected(just_committed)`` (the
step just committed and every step queued or being written) is read *before* storage is
listed, so a step queued afterwards is not in the listing either. A failed listing or
deletion is logged and retried after the next commit (:func:`~.publish.sweep`); a bug
is logged and does not stop later retention. ``on_swept(view, plan)`` runs after each
complete sweep.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..errors import CheckpointError
from .commit import StorageView
from .publish import sweep
from .reads import scan
from .retention import RetentionPlan
from .storage import Storage
from .threads import QueueThread, wait_for_progress

log = logging.getLogger("dtruntime.checkpoint")


class Janitor(QueueThread[int]):
    """The retention thread of one manager (see the module docstring)."""

    def __init__(
        self,
        storage: Storage,
        keep_last_n: int,
        protected: Callable[[int], set[int]],
        on_swept: Callable[[StorageView, RetentionPlan], None],
    ) -> None:
        self._storage = storage
        self._keep_last_n = keep_last_n
        self._protected = protected
        self._on_swept = on_swept
        self._progress = threading.Condition()
        self._requested = 0  # the counters let wait() cover the requests made before it
        self._done = 0
        super().__init__("dtruntime-checkpoint-janitor")

    def request(self, just_committed: int) -> None:
        """Apply retention after the commit of ``just_committed``."""
        with self._progress:
            self._requested += 1
        self._queue.put(just_committed)

    @property
    def busy(self) -> bool:
        """Whether a request is not handled yet."""
        with self._progress:
            return self._done < self._requested

    def wait(self, deadline: float | None) -> None:
        """Wait until every request made so far is handled; CheckpointTimeout past ``deadline``
        (a ``time.monotonic()`` value, None for no limit)."""
        with self._progress:
            target = self._requested
            while self._done < target:
                wait_for_progress(self._progress, deadline, "checkpoint retention still running")

    def _run(self) -> None:
        while (step := self._queue.get()) is not None:
            latest, handled, stopping = step, 1, False
            while not self._queue.empty():
                more = self._queue.get()
                if more is None:
                    stopping = True
                    break
                latest, handled = more, handled + 1
            try:
                self._retain(latest)
            except Exception:  # noqa: BLE001 - a bug here must not stop later retention
                log.exception("retention under %s failed", self._storage.url)
            with self._progress:
                self._done += handled
                self._progress.notify_all()
            if stopping:
                return

    def _retain(self, just_committed: int) -> None:
        protected = self._protected(just_committed)  # before the listing: see the module docstring
        try:
            view = scan(self._storage)
        except CheckpointError as exc:
            log.warning("retention under %s failed (retried after the next commit): %s", self._storage.url, exc)
            return
        plan = sweep(self._storage, view, self._keep_last_n, protected)
        if plan is not None:
            self._on_swept(view, plan)
