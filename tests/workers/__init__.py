"""Worker processes the tests launch; each prints its events as JSON lines (see :func:`emit`)."""

from __future__ import annotations

import json
import sys
import threading

from dtruntime import TrainingOrchestrator

_EMIT_LOCK = threading.Lock()


def emit(**fields) -> None:
    """Print one whole JSON line: events come from several threads, and print writes in pieces."""
    line = json.dumps(fields) + "\n"
    with _EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def fast_orchestrator(rank: int, coordinator: str, world: int, **overrides) -> TrainingOrchestrator:
    """The orchestrator of worker ``rank``, detecting losses fast (heartbeat 100 ms, timeout
    1 s) and ignoring the test runner's environment; ``overrides`` are more config keys."""
    return TrainingOrchestrator(
        f"worker-{rank}", coordinator, world, rank, env={}, heartbeat_interval_ms=100, heartbeat_timeout_ms=1000,
        **overrides,
    )
