"""The progress watchdog: a rank whose training loop is stuck is found, dumps its stacks and leaves.

The control plane's heartbeats come from the driver thread, so a rank whose main thread
is stuck (an endless loop, a deadlock, a dataloader that never returns) keeps
heartbeating. Progress tells it apart: every rank gossips two grow-only counters, its
step (:data:`~dtruntime.protocol.commands.STEP_KEY`, published by
``step_boundary``) and a *waiting* beat (:data:`WAITING_KEY`, published by the watchdog
thread at each check while the rank is inside :meth:`Watchdog.waiting`: a dtruntime
barrier, agreement or registration, ``ElasticTrainer``'s recovery and regroup; a rank
waiting for the others is not stuck). A change of either is *activity*.

Rule (each rank applies it to every live member, itself included, by its own clock):
worker W is **hung** when W has shown no activity for ``timeout`` seconds and every
other live member has shown activity since W's last (the others moved on or wait, W
alone is stuck). Consequences:

* A job paused as a whole (everyone in a long evaluation, or blocked in a collective)
  declares nobody; nor do two ranks stuck at once (the heartbeat timeout and the
  collective timeout remain the bounds there).
* In a lock-step job the others show activity only once they stop waiting on W in a
  collective and start waiting in dtruntime (``ElasticTrainer``'s collective timeout),
  so W is declared at ``max(timeout, collective timeout)``, not before.
* A rank whose driver is stopped too (SIGSTOP, a C call holding the GIL) is declared by
  the others' watchdogs and, independently, dead by the failure detector.

The hung rank itself, when it finds the rule true of itself (never while it is inside
:meth:`Watchdog.waiting`): logs an ERROR with its
worker id, rank, host and last step, writes every thread's Python stack to stderr with
:mod:`faulthandler` (the stuck function is named there), waits a few gossip rounds
(so the other ranks, which heard its last step later, see its timeout pass too; at most
:data:`HOLD_MAX_S`), leaves the cluster (the survivors see it LEFT and regroup without
it, as for a lost worker) and exits with :data:`HUNG_EXIT`. Every other rank logs one
WARNING naming it the same way.

``timeout``: ``[watchdog] progress_timeout_s``, or when 0, 10 x the p99 of this rank's
last :data:`STEP_WINDOW` step times, at least ``min_progress_timeout_s``. The
watchdog thread starts at the first step boundary and checks ``CHECKS_PER_TIMEOUT``
times per timeout (at most once a second; one driver call each).
"""

from __future__ import annotations

import faulthandler
import logging
import math
import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..protocol.commands import STEP_KEY
from .host import ControlHost


log = logging.getLogger("dtruntime.watchdog")

WAITING_KEY = "dtruntime.waiting"
HUNG_EXIT = 3
STEP_WINDOW = 256
CHECKS_PER_TIMEOUT = 10
TIMEOUT_FACTOR = 10
HOLD_MAX_S = 5.0  # at most this long between a hung rank's stack dump and its departure


@dataclass
class _Seen:
    step: int | None
    waiting: int | None
    changed_at: float  # observer's clock: the last time either counter moved
    step_changed_at: float | None = None
    step_time_s: float | None = None  # smoothed seconds per step, as observed by gossip


@dataclass(frozen=True)
class Hung:
    """A worker declared hung: its last step and how long it showed no activity."""

    worker_id: str
    rank: int
    host: str
    step: int | None
    stalled_s: float

    def describe(self) -> str:
        return (f"{self.worker_id} (rank {self.rank}, host {self.host}) is hung: no progress since step "
                f"{self.step} for {self.stalled_s:.1f} s while every other rank progressed or waited for it")


class ProgressWatch:
    """The rule above over counters observed at times ``now`` (no IO, no clock of its own)."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def observe(self, now: float, steps: dict[str, int], waiting: dict[str, int]) -> None:
        for worker in set(steps) | set(waiting):
            step, beat = steps.get(worker), waiting.get(worker)
            seen = self._seen.get(worker)
            if seen is None:
                self._seen[worker] = _Seen(step, beat, now, now if step is not None else None)
                continue
            if step != seen.step and step is not None:
                if seen.step is not None and seen.step_changed_at is not None and step > seen.step:
                    sample = (now - seen.step_changed_at) / (step - seen.step)
                    seen.step_time_s = sample if seen.step_time_s is None else 0.8 * seen.step_time_s + 0.2 * sample
                seen.step_changed_at = now
            if step != seen.step or beat != seen.waiting:
                seen.step, seen.waiting, seen.changed_at = step, beat, now

    def hung(self, now: float, live: Iterable[str], timeout: float) -> list[tuple[str, float]]:
        """``(worker, seconds without activity)`` of every live worker the rule declares hung."""
        live = [w for w in live if w in self._seen]
        found = []
        for worker in live:
            last = self._seen[worker].changed_at
            others = [self._seen[o].changed_at for o in live if o != worker]
            if now - last >= timeout and others and all(t > last for t in others):
                found.append((worker, now - last))
        return found

    def step_of(self, worker: str) -> int | None:
        seen = self._seen.get(worker)
        return None if seen is None else seen.step

    def step_times(self) -> dict[str, float]:
        return {w: s.step_time_s for w, s in self._seen.items() if s.step_time_s is not None}


class Watchdog:
    """One orchestrator's watchdog thread, step-time statistics and hang reports."""

    def __init__(self, orchestrator: ControlHost) -> None:
        self._orch = orchestrator
        settings = orchestrator.config.watchdog
        self.fixed_timeout_s = float(settings.progress_timeout_s)
        self.min_timeout_s = float(settings.min_progress_timeout_s)
        self._watch = ProgressWatch()
        self._own_steps: deque[float] = deque(maxlen=STEP_WINDOW)
        self._last_boundary: float | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reported: dict[str, int | None] = {}  # worker -> step at which it was reported hung
        self.hung: dict[str, Hung] = {}
        self._waiting_beat = 0
        self._waiting_depth = 0  # callers inside waiting(); the thread beats for them

    # -- inputs from the training loop ---------------------------------------------------

    def on_boundary(self) -> None:
        """A step boundary: record the step time, start the thread at the first one."""
        now = time.monotonic()
        with self._lock:
            if self._last_boundary is not None:
                self._own_steps.append(now - self._last_boundary)
            self._last_boundary = now
            start = self._thread is None
            if start:
                self._thread = threading.Thread(target=self._run, name="dtruntime-watchdog", daemon=True)
        if start:
            self._thread.start()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Mark the calling code as waiting for the other ranks (nestable, any thread):
        the watchdog thread publishes a waiting beat at each check meanwhile, and this
        rank never declares itself hung."""
        with self._lock:
            self._waiting_depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting_depth -= 1

    def _beat(self) -> None:
        with self._lock:
            self._waiting_beat += 1
            beat = self._waiting_beat
        try:
            self._orch.set_progress(WAITING_KEY, beat)
        except Exception:  # noqa: BLE001 - a closed driver: nothing to publish to
            pass

    # -- figures --------------------------------------------------------------------------

    def timeout_s(self) -> float:
        if self.fixed_timeout_s > 0:
            return self.fixed_timeout_s
        with self._lock:
            samples = sorted(self._own_steps)
        if len(samples) < 2:
            return self.min_timeout_s
        p99 = samples[min(len(samples) - 1, math.ceil(0.99 * len(samples)) - 1)]
        return max(self.min_timeout_s, TIMEOUT_FACTOR * p99)

    def straggler_report(self) -> dict[str, Any]:
        """Per-rank step time as seen here (gossip-smoothed; this rank's own exactly) and the
        spread against the median: ``{"median_step_time_s", "timeout_s", "ranks": {rank:
        {"worker_id", "step", "step_time_s", "vs_median", "straggler", "hung"}}}``; a rank is
        a straggler when its step time exceeds the median by more than 20 %."""
        members = {m.worker_id: m for m in self._orch._running().snapshot.members}
        times = {w: t for w, t in self._watch.step_times().items() if w in members}
        own = self._orch.worker_id
        with self._lock:
            if self._own_steps:
                times[own] = statistics.fmean(list(self._own_steps)[-32:])
        median = statistics.median(times.values()) if times else None
        ranks = {}
        for worker, member in sorted(members.items(), key=lambda kv: kv[1].rank):
            step_time = times.get(worker)
            ratio = step_time / median if step_time is not None and median else None
            ranks[str(member.rank)] = {
                "worker_id": worker, "step": self._watch.step_of(worker), "step_time_s": step_time,
                "vs_median": ratio, "straggler": ratio is not None and ratio > 1.2, "hung": worker in self.hung,
            }
        return {"median_step_time_s": median, "timeout_s": self.timeout_s(), "ranks": ranks}

    # -- the thread -------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = self.timeout_s()
            if self._stop.wait(min(1.0, max(0.05, timeout / CHECKS_PER_TIMEOUT))):
                return
            try:
                self.check(time.monotonic(), timeout)
            except Exception as exc:  # noqa: BLE001 - a closed driver ends the watch
                if self._orch._driver is None or not self._orch._driver.alive:
                    return
                log.debug("watchdog check failed: %s", exc)

    def check(self, now: float, timeout: float) -> list[Hung]:
        """Observe the gossiped counters once; report (and act on) newly hung workers."""
        with self._lock:
            in_wait = self._waiting_depth > 0
        if in_wait:
            self._beat()
        driver = self._orch._running()
        steps, waiting, members = driver.submit(
            lambda node, _: (node.progress_of(STEP_KEY), node.progress_of(WAITING_KEY), node.members())
        ).result(5)
        self._watch.observe(now, steps, waiting)
        by_id = {m.worker_id: m for m in members}
        for gone in [w for w in self.hung if w not in by_id]:
            del self.hung[gone]
        found = []
        for worker, stalled in self._watch.hung(now, by_id, timeout):
            member = by_id[worker]
            report = Hung(worker, member.rank, _host(member.endpoint), self._watch.step_of(worker), stalled)
            self.hung[worker] = report
            if self._reported.get(worker, -1) == report.step:
                continue
            self._reported[worker] = report.step
            found.append(report)
            if worker == self._orch.worker_id:
                if in_wait:
                    continue  # waiting for the others (its beat may not be observed yet)
                self._leave_and_exit(report)
            else:
                log.warning("%s; it leaves the job (or is declared dead) and the others go on without it",
                            report.describe())
        return found

    def _leave_and_exit(self, report: Hung) -> None:
        log.error("this worker %s; its Python stacks follow; it leaves the job and exits %d",
                  report.describe(), HUNG_EXIT)
        _flush_logs()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        # The others heard this rank's last step a gossip delay later than it did itself:
        # stay until their watchdogs saw the timeout pass too, so every rank reports it.
        time.sleep(self._hold_s())
        driver = self._orch._driver
        if driver is not None:
            driver.close(timeout=2.0)  # announces LEFT: the survivors regroup without this rank
        os._exit(HUNG_EXIT)


    def _hold_s(self) -> float:
        coordinator = self._orch.config.coordinator
        spread = 3 * coordinator.heartbeat_interval_ms / 1000 * math.ceil(math.log2(self._orch.world_size + 1))
        return min(HOLD_MAX_S, spread + 2 * min(1.0, self.timeout_s() / CHECKS_PER_TIMEOUT))


def _host(endpoint: str) -> str:
    rest = endpoint.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0].strip("[]") if ":" in rest else rest


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers + logging.getLogger("dtruntime").handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - flushing is best effort
            pass
