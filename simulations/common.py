"""Shared pieces of the scenarios: cluster set-up, measurements, a timeline for plots."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dtruntime.protocol.events import BarrierFailed, BarrierReleased, Event, WorkerLost
from dtruntime.protocol.settings import ProtocolSettings
from dtruntime.testing import NetworkFaults, SimCluster

WARMUP_LIMIT = 10.0  # simulated seconds allowed for the first convergence

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

    @property
    def ok(self) -> bool:
        return not self.violations


class Observer:
    """Records, per worker, when it saw each worker lost and each barrier end."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.lost_at: dict[str, dict[str, float]] = {}  # lost worker -> observer -> time
        self.released_at: dict[str, dict[str, float]] = {}  # barrier id -> worker -> time
        self.failed: dict[str, dict[str, BarrierFailed]] = {}
        cluster.listeners.append(self._on_event)

    def _on_event(self, worker_id: str, event: Event) -> None:
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


def build(
    workers: int,
    seed: int,
    heartbeat_ms: int,
    timeout_ms: int,
    *,
    faults: NetworkFaults = NetworkFaults(),
    codec: bool = True,
    trace: bool = True,
    timeline: ScenarioResult | None = None,
) -> tuple[SimCluster, Observer]:
    """A cluster warmed up to its first convergence (raises if that takes too long)."""
    settings = ProtocolSettings.from_millis(heartbeat_ms, timeout_ms)
    cluster = SimCluster(workers, seed, settings, faults=faults, codec=codec, trace=trace)
    observer = Observer(cluster)
    for hook in BUILD_HOOKS:
        hook(cluster)
    if timeline is not None:
        sample_timeline(cluster, timeline)
    if cluster.run_until_true(cluster.converged, WARMUP_LIMIT, step=settings.probe_period) is None:
        raise RuntimeError(f"seed {seed}: no convergence within {WARMUP_LIMIT}s of start")
    return cluster, observer


def sample_timeline(cluster: SimCluster, result: ScenarioResult, every: float = 0.05, until: float = 600.0) -> None:
    """Sample (workers that know a leader, distinct leaders, smallest live view) for plots."""

    def sample() -> None:
        up = cluster.up_workers()
        leaders = [w.node.leader_id for w in up]
        known = [l for l in leaders if l is not None]
        smallest = min((len(w.node.members()) for w in up), default=0)
        result.timeline.append((cluster.now, len(known), len(set(known)), smallest))
        if cluster.now + every <= until:
            cluster.at(cluster.now + every, sample)

    cluster.at(cluster.now, sample)


def messages_per_worker_second(cluster: SimCluster, since_sent: int, since: float) -> float:
    sent = sum(w.sent for w in cluster.workers.values()) - since_sent
    return sent / len(cluster.workers) / max(cluster.now - since, 1e-9)


def total_sent(cluster: SimCluster) -> int:
    return sum(w.sent for w in cluster.workers.values())


def finish(cluster: SimCluster, result: ScenarioResult) -> ScenarioResult:
    """Add the figures every scenario reports: traffic and how much was checked."""
    result.metrics.setdefault("msgs_per_worker_s", messages_per_worker_second(cluster, 0, 0.0))
    result.metrics["barrier_passes_checked"] = float(cluster.invariants.barriers_passed)
    result.metrics["leader_terms_checked"] = float(len(cluster.invariants.leader_of_term))
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
