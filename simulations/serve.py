"""``python -m simulations <scenario> --serve PORT``: the dashboard over a simulated cluster.

:class:`SimDashboard` runs the real HTTP server (:class:`dtruntime.http.HttpServer`, the
same endpoints and page every peer serves) over the view of one simulated worker:

- Paced: a recurring simulator action every ``TICK_S`` simulated seconds sleeps until the
  wall clock has caught up with simulated time divided by ``speed``, so the page shows
  the scenario (a partition, a crash) as it unfolds. Without ``--serve`` nothing is paced.
- Published, not shared: the same action takes the served node's immutable
  :class:`~dtruntime.protocol.status.NodeStatus` and swaps it in as the latest
  observation; the server thread only reads that reference (never the simulator).
- At simulated time: the view's clock is the simulator's, so ``view_age_s`` and ages are
  simulated seconds; log records (the simulator's notes such as ``crash w0`` or
  ``partition``, and the served node's events) carry simulated time as their timestamp.
- Which worker answers: ``worker`` if given (``--serve-worker w3``), else the
  lowest-ranked worker that is up at each tick (the old one's view freezes when it
  crashes, as a crashed peer's page would be gone).

Attach it to every cluster :func:`simulations.common.build` makes via
:data:`simulations.common.BUILD_HOOKS` (``__main__`` does that for ``--serve``).
"""

from __future__ import annotations

import logging
import threading
import time

from dtruntime.errors import DtruntimeError
from dtruntime.http import HttpServer, JobView, LogRing, Metrics
from dtruntime.protocol.events import Event
from dtruntime.runtime.driver import Observation
from dtruntime.testing import SimCluster
from dtruntime.testing.sim import SimWorker

TICK_S = 0.05  # simulated seconds between published views (and pacing sleeps)
SIM_NOTE = " sim "  # SimCluster._note lines: "<time> sim <text>"


class SimDashboard:
    """Serve the dashboard of the simulated clusters :meth:`attach` is given, on ``port``."""

    def __init__(self, port: int, *, speed: float = 1.0, worker: str | None = None, host: str = "127.0.0.1") -> None:
        if not speed > 0:
            raise DtruntimeError(f"speed must be > 0, not {speed!r}")
        self.speed = speed
        self.pinned = worker
        self._lock = threading.Lock()
        self._latest: Observation | None = None
        self._cluster: SimCluster | None = None
        self._logs = LogRing("sim", capacity=1000, level=logging.DEBUG)
        self._metrics = Metrics(self._observe)
        self._view = JobView(worker or "w0", 0, self._observe, self._metrics, self._logs, clock=self._sim_now)
        self._server = HttpServer(self._view, host=host, port=port)
        self._trace_seen = 0
        self._wall0 = 0.0
        self._sim0 = 0.0

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> None:
        self._server.start()

    def close(self) -> None:
        self._server.close()

    def attach(self, cluster: SimCluster) -> None:
        """Serve ``cluster`` from now on (a scenario with several clusters: the newest)."""
        if self.pinned is not None and self.pinned not in cluster.workers:
            raise DtruntimeError(f"--serve-worker {self.pinned!r} is not in the cluster (w0..w{len(cluster.workers) - 1})")
        with self._lock:
            self._cluster = cluster
        self._trace_seen = 0
        self._wall0, self._sim0 = time.perf_counter(), cluster.now
        cluster.tracing = True  # the simulator's notes (crash w0, partition, heal) become log lines
        cluster.listeners.append(self._on_event)
        self._note(cluster, logging.INFO, f"simulated cluster of {len(cluster.workers)} workers, seed {cluster.seed}")
        cluster.at(cluster.now, lambda: self._tick(cluster))

    # -- simulator side (the scenario's thread) ---------------------------------------

    def publish_final(self) -> None:
        """Publish the attached cluster's view as the scenario left it: the last tick can
        come up to ``TICK_S`` before the scenario's last events (a new leader, say)."""
        with self._lock:
            cluster = self._cluster
        if cluster is not None:
            self._publish(cluster)

    def _publish(self, cluster: SimCluster) -> None:
        worker = self._served(cluster)
        if worker is not None:
            self._view.worker_id, self._view.rank = worker.worker_id, worker.rank
            observation = Observation(worker.node.status(cluster.now),
                                      {"sent": worker.sent, "bytes_sent": worker.bytes_sent}, {})
            with self._lock:
                self._latest = observation
        self._drain_trace(cluster)

    def _tick(self, cluster: SimCluster) -> None:
        self._publish(cluster)
        lag = self._wall0 + (cluster.now - self._sim0) / self.speed - time.perf_counter()
        if lag > 0:
            time.sleep(lag)
        cluster.at(cluster.now + TICK_S, lambda: self._tick(cluster))

    def _served(self, cluster: SimCluster) -> SimWorker | None:
        if self.pinned is not None:
            return cluster.workers[self.pinned]
        up = [w for w in cluster.workers.values() if w.up]
        return min(up, key=lambda w: w.rank) if up else None

    def _on_event(self, worker_id: str, event: Event) -> None:
        cluster = self._cluster
        if cluster is not None and worker_id == self._view.worker_id:
            self._note(cluster, logging.INFO, f"{worker_id}: {type(event).__name__} {event}", worker_id)

    def _drain_trace(self, cluster: SimCluster) -> None:
        lines = cluster.trace
        for line in lines[self._trace_seen:]:
            if SIM_NOTE in line:
                self._note(cluster, logging.WARNING, line.split(SIM_NOTE, 1)[1])
        self._trace_seen = len(lines)

    def _note(self, cluster: SimCluster, level: int, message: str, worker_id: str = "sim") -> None:
        record = logging.LogRecord("simulations", level, __file__, 0, message, None, None)
        record.created = cluster.now  # the page shows simulated time
        self._logs.worker_id = worker_id
        self._logs.handle(record)

    # -- server side ----------------------------------------------------------------

    def _observe(self) -> Observation | None:
        with self._lock:
            return self._latest

    def _sim_now(self) -> float:
        cluster = self._cluster
        return 0.0 if cluster is None else cluster.now
