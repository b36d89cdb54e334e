"""Step time per rank, derived from the training step every worker gossips.

A worker's step is its progress counter ``dtruntime.step`` (``TrainingOrchestrator.report_step``),
or else the steps applied in ``ElasticTrainer``'s gossiped position (its low 40 bits).
Each :meth:`StepTracker.update` with a newer status records, per worker, when its step
was first seen to change; the step time is the time between the oldest and newest
change within ``WINDOW`` seconds divided by the steps between them (None until a worker
has advanced twice). Gossip delays what a worker hears of another by a few probe
periods, evenly, so the rate is right even where the step number lags a little.

A rank is a straggler when at least ``MIN_RANKS`` ranks have a step time and its own is
more than ``STRAGGLER_FACTOR`` times their median. Thread-safe.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass

from ..protocol.status import NodeStatus

STEP_KEY = "dtruntime.step"
POSITION_KEY = "dtruntime.elastic.position"  # elastic.trainer's: (generation << 40) | steps applied
POSITION_MASK = (1 << 40) - 1
WINDOW = 10.0  # seconds of step changes a rate is computed over
STRAGGLER_FACTOR = 1.5
MIN_RANKS = 3


@dataclass(frozen=True)
class StepInfo:
    rank: int
    step: int
    step_time_s: float | None
    straggler: bool


def steps_of(status: NodeStatus) -> dict[str, int]:
    """Every worker's latest step in ``status`` (``dtruntime.step`` wins over the elastic position)."""
    explicit: dict[str, int] = {}
    positions: dict[str, int] = {}
    for worker_id, key, value in status.progress:
        if key == STEP_KEY:
            explicit[worker_id] = value
        elif key == POSITION_KEY:
            positions[worker_id] = value & POSITION_MASK
    steps = {**positions, **explicit}
    return steps


class StepTracker:
    def __init__(self) -> None:
        self._changes: dict[str, deque[tuple[float, int]]] = {}  # worker -> (time first seen, step)
        self._taken_at = float("-inf")
        self._latest: dict[str, StepInfo] = {}
        self._lock = threading.Lock()

    def update(self, status: NodeStatus) -> dict[str, StepInfo]:
        """Fold in ``status`` (ignored unless newer than the last one); the members' step info."""
        with self._lock:
            if status.taken_at > self._taken_at:
                self._taken_at = status.taken_at
                self._latest = self._fold(status)
            return dict(self._latest)

    def _fold(self, status: NodeStatus) -> dict[str, StepInfo]:
        now = status.taken_at
        ranks = {m.worker_id: m.rank for m in status.members}
        for worker_id, step in steps_of(status).items():
            if worker_id not in ranks:
                continue
            changes = self._changes.setdefault(worker_id, deque())
            if not changes or step > changes[-1][1]:
                changes.append((now, step))
            while len(changes) > 2 and now - changes[1][0] > WINDOW:
                changes.popleft()
        for worker_id in list(self._changes):
            if worker_id not in ranks:
                del self._changes[worker_id]
        times: dict[str, float | None] = {}
        for worker_id, changes in self._changes.items():
            (t0, s0), (t1, s1) = changes[0], changes[-1]
            times[worker_id] = (t1 - t0) / (s1 - s0) if s1 > s0 else None
        known = [t for t in times.values() if t is not None]
        median = statistics.median(known) if len(known) >= MIN_RANKS else None
        return {
            worker_id: StepInfo(
                ranks[worker_id], changes[-1][1], times[worker_id],
                median is not None and times[worker_id] is not None and times[worker_id] > STRAGGLER_FACTOR * median,
            )
            for worker_id, changes in self._changes.items()
        }
