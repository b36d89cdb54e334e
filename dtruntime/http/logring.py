"""A bounded ring of recent log records, for ``GET /api/logs`` and the dashboard's log tail.

:class:`LogRing` is a ``logging.Handler``: attached to the ``dtruntime`` logger it keeps
the newest ``capacity`` records as plain dicts, each with a sequence number that grows
by one per record (``seq``), so a client asks for what is new with ``after=<last seq>``
and sees a gap in the numbers when records were pushed out. Messages are formatted when
recorded and cut to ``MAX_MESSAGE`` characters. Thread-safe; ``emit`` never raises.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

MAX_MESSAGE = 2000
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogRing(logging.Handler):
    """Keeps the newest ``capacity`` records of the loggers it is attached to."""

    def __init__(self, worker_id: str, capacity: int = 1000, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.worker_id = worker_id
        self._records: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = 0
        self._ring_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[0] is not None:
                message += f" ({record.exc_info[0].__name__}: {record.exc_info[1]})"
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            message = str(record.msg)
        entry = {
            "time": record.created, "level": record.levelname, "logger": record.name,
            "worker_id": self.worker_id, "message": message[:MAX_MESSAGE],
        }
        with self._ring_lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._records.append(entry)

    def records(self, *, level: str = "DEBUG", after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` records at ``level`` or above with ``seq > after``, oldest first."""
        threshold = logging.getLevelName(level)
        with self._ring_lock:
            chosen = [r for r in self._records if r["seq"] > after and logging.getLevelName(r["level"]) >= threshold]
        return chosen[-limit:] if limit else []

    @property
    def last_seq(self) -> int:
        return self._seq
