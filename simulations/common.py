"""Shared pieces of the scenarios: cluster set-up, measurements, a timeline for plots."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dtruntime.protocol.events import BarrierFailed, BarrierReleased, Event, WorkerLost
from dtruntime.protocol.settings import ProtocolSettings
from dtruntime.testing import NetworkFaults, SimCluster

WARMUP_LIMIT = 10.0  # simulated seconds allowed for the first convergence
PLOT_TAIL = 0.5  # simulated seconds a run with a timeline goes on after its figures are taken
CODEC_MAX_WORKERS = 1024  # above this, messages skip the wire codec (see build)

#: Called with every cluster :func:`build` makes, before its warm-up (``--serve`` attaches here).
BUILD_HOOKS: list[Callable[[SimCluster], None]] = []


@dataclass
class ScenarioResult:
    """Figures of one scenario run. ``None`` marks a figure whose event never happened."""

    scenario: str
    seed: int
    workers: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, with leader, leaders, min live
    marks: list[tuple[float, str]] = field(default_factory=list)  # (t, what happened): faults, heals, convergence

    @property
    def ok(self) -> bool:
        return not self.violations


_OBSERVED = frozenset({WorkerLost, BarrierReleased, BarrierFailed})


class Observer:
    """Records, per worker, when it saw each worker lost and each barrier end."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.lost_at: dict[str, dict[str, float]] = {}  # lost worker -> observer -> time
        self.released_at: dict[str, dict[str, float]] = {}  # barrier id -> worker -> time
        self.failed: dict[str, dict[str, BarrierFailed]] = {}
        cluster.listeners.append(self._on_event)

    def _on_event(self, worker_id: str, event: Event) -> None:
        if event.__class__ not in _OBSERVED:
            return
        now = self.cluster.now
        if isinstance(event, WorkerLost):
            self.lost_at.setdefault(event.worker_id, {}).setdefault(worker_id, now)
        elif isinstance(event, BarrierReleased):
            self.released_at.setdefault(event.barrier_id, {})[worker_id] = now
        elif isinstance(event, BarrierFailed):
            self.failed.setdefault(event.barrier_id, {})[worker_id] = event

    def all_saw_lost(self, lost: str, observers: Iterable[str]) -> float | None:
        seen = self.lost_at.get(lost, {})
        times = [seen.get(o) for o in observers]
        return None if not times or None in times else max(times)  # type: ignore[type-var]

    def all_released(self, barrier_id: str, workers: Iterable[str]) -> float | None:
        seen = self.released_at.get(barrier_id, {})
        times = [seen.get(w) for w in workers]
        return None if not times or None in times else max(times)  # type: ignore[type-var]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run a simulation with the cyclic garbage collector off; collect once at the end.

    A large cluster is millions of long-lived containers (every node's view), and each
    full collection walks them all: at 4096 workers the collector took half of the
    start-up. The simulator frees what it drops by reference counting; the few cycles
    a run makes (a cluster and its checkers, a commit's closures) are collected when
    the block ends.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        if enabled:
            gc.enable()


def build(
    workers: int,
    seed: int,
    heartbeat_ms: int,
    timeout_ms: int,
    *,
    faults: NetworkFaults = NetworkFaults(),
    codec: bool | None = None,
    trace: bool = False,
    timeline: ScenarioResult | None = None,
) -> tuple[SimCluster, Observer]:
    """A cluster warmed up to its first convergence (raises if that takes too long).

    ``codec=None`` encodes and decodes every message up to :data:`CODEC_MAX_WORKERS`
    workers and skips the codec above: decoding gives every node its own copy of every
    member entry (10^8 objects at 10,000 workers), while skipping it lets all nodes share
    the sender's immutable entries. The protocol's behaviour is the same either way (the
    codec round-trips every message exactly, which the codec tests check); only the
    byte counts are lost. ``trace`` keeps the event log (scenarios do not read it).
    """
    settings = ProtocolSettings.from_millis(heartbeat_ms, timeout_ms)
    if codec is None:
        codec = workers <= CODEC_MAX_WORKERS
    cluster = SimCluster(workers, seed, settings, faults=faults, codec=codec, trace=trace)
    observer = Observer(cluster)
    for hook in BUILD_HOOKS:
        hook(cluster)
    if timeline is not None:
        sample_timeline(cluster, timeline)
    if cluster.run_until_true(cluster.converged, WARMUP_LIMIT, step=settings.probe_period) is None:
        raise RuntimeError(f"seed {seed}: no convergence within {WARMUP_LIMIT}s of start")
    return cluster, observer


def timeline_row(cluster: SimCluster) -> tuple[float, int, int, int]:
    """(now, workers that know a leader, distinct leaders, smallest live view) of the running workers."""
    up = cluster.up_workers()
    known = [w.node.leader_id for w in up if w.node.leader_id is not None]
    smallest = min((w.node.membership.live_count for w in up), default=0)
    return cluster.now, len(known), len(set(known)), smallest


def sample_timeline(cluster: SimCluster, result: ScenarioResult, every: float = 0.05, until: float = 600.0) -> None:
    """Sample :func:`timeline_row` every ``every`` simulated seconds, for plots.

    Sampling only reads state, so a run's figures are the same with or without it.
    ``finish`` runs such a cluster ``PLOT_TAIL`` seconds past the end of the scenario
    (after its figures are taken) and adds a last row, so a plot shows the state the
    scenario stopped in (converged, when it waits for that) held, not the state up to
    one sampling interval before it.
    """

    def sample() -> None:
        result.timeline.append(timeline_row(cluster))
        if cluster.now + every <= until:
            cluster.at(cluster.now + every, sample)

    cluster.at(cluster.now, sample)


def mark(cluster: SimCluster, result: ScenarioResult, what: str) -> None:
    """Note that ``what`` happened now (a fault, a heal, convergence): plots draw it."""
    result.marks.append((cluster.now, what))


def messages_per_worker_second(cluster: SimCluster, since_sent: int, since: float) -> float:
    sent = sum(w.sent for w in cluster.workers.values()) - since_sent
    return sent / len(cluster.workers) / max(cluster.now - since, 1e-9)


def total_sent(cluster: SimCluster) -> int:
    return sum(w.sent for w in cluster.workers.values())


def finish(cluster: SimCluster, result: ScenarioResult) -> ScenarioResult:
    """Add the figures every scenario reports: traffic and how much was checked.

    A run that samples a timeline then goes on for ``PLOT_TAIL`` simulated seconds (its
    figures are already taken; invariant violations in the tail are still reported).
    """
    result.metrics.setdefault("msgs_per_worker_s", messages_per_worker_second(cluster, 0, 0.0))
    result.metrics["barrier_passes_checked"] = float(cluster.invariants.barriers_passed)
    result.metrics["leader_terms_checked"] = float(len(cluster.invariants.leader_of_term))
    if result.timeline:
        cluster.run_for(PLOT_TAIL)
        result.timeline.append(timeline_row(cluster))
    result.violations = list(cluster.invariants.violations)
    return result


def wait_for(cluster: SimCluster, condition: Callable[[], float | None | bool], limit: float) -> float | None:
    """Run until ``condition()`` is truthy or ``limit`` simulated seconds pass."""
    end = cluster.now + limit
    step = cluster.settings.probe_period / 4
    while cluster.now < end:
        if condition():
            return cluster.now
        cluster.run_until(min(end, cluster.now + step))
    return cluster.now if condition() else None


# Figures every scenario reports (added by ``finish``).
COMMON_FIGURES: dict[str, str] = {
    "msgs_per_worker_s": "messages sent per worker per simulated second over the whole run, unless the "
                         "scenario defines it",
    "barrier_passes_checked": "barrier releases (one per worker per barrier) the invariant checker "
                              "verified: everyone expected had arrived or was excluded as lost",
    "leader_terms_checked": "terms that had a leader; the checker verified at most one leader per term",
}
