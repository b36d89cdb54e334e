"""Worker processes the tests launch; each prints its events as JSON lines (see :func:`emit`)."""

from __future__ import annotations

import json
import sys
import threading

_EMIT_LOCK = threading.Lock()


def emit(**fields) -> None:
    """Print one whole JSON line: events come from several threads, and print writes in pieces."""
    line = json.dumps(fields) + "\n"
    with _EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()
