"""The take-over scenario: workers lost mid-epoch, the survivors' take-over agreement run
over the simulated network by the production state machine
(:class:`~dtruntime.protocol.takeover.TakeOverRounds`).

Every worker reads its share of one epoch (the production shard ring) at its own pace and
gossips its progress (``set_progress``), as ``DatasetRegistry.report_progress`` does. Some
workers crash while they read; each survivor, once its own share is read, runs the
take-over rounds (as ``DatasetRegistry.take_over`` does: arrive at the barrier the machine
names, feed the release back, wait its retry pause) and splits the lost workers' unread
samples with :func:`dtruntime.sharding.take_over_cursors`.

Checked at the end (violations, like the simulator's invariants):

* every survivor decides the same lost set (the crashed workers) and the same cursors;
* no lost worker is credited with more samples than it had read before its crash;
* the survivors' own shares, their take-over shares and what the lost workers are
  credited with cover every sample of the epoch exactly once, and every survivor's
  take-over share has the same size after its recorded padding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from dtruntime import sharding
from dtruntime.errors import DatasetError
from dtruntime.protocol.events import BarrierFailed, BarrierReleased, Event
from dtruntime.protocol.takeover import TakeOverDecision, TakeOverRounds
from dtruntime.testing import NetworkFaults, SimCluster

from .common import ScenarioResult, build, finish, mark, wait_for

TOTAL_SAMPLES = 10_007
SHARD_SIZE = 97
BATCH = 50  # samples a worker reads between two progress reports
BATCH_SECONDS = (0.05, 0.12)  # a worker's pace, drawn per worker: seconds per batch
FAULTS = NetworkFaults(loss=0.02, duplicate=0.02)
KEY = "data@0"
DECIDE_LIMIT = 20.0  # simulated seconds after the last read for every survivor to decide


@dataclass
class Survivor:
    """One worker that finished its share and runs the take-over rounds."""

    worker_id: str
    rounds: TakeOverRounds
    barrier_id: str = ""
    proposals: list[str] = field(default_factory=list)  # barrier ids, in order
    decided_at: float | None = None
    error: str | None = None


class TakeOverRun:
    """The epoch's readers and the survivors' drivers over one simulated cluster."""

    def __init__(self, cluster: SimCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.members = list(cluster.workers)
        sizes = sharding.uniform_shard_sizes(TOTAL_SAMPLES, SHARD_SIZE)
        self.assignment = sharding.assign_shards(len(sizes), self.members, 0, 7, shard_sizes=sizes, shuffle=True)
        self.length = self.assignment[self.members[0]].num_samples  # the same for every member
        self.pace = {m: rng.uniform(*BATCH_SECONDS) for m in self.members}
        self.read: dict[str, int] = {m: 0 for m in self.members}
        self.crashed: dict[str, int] = {}  # victim -> samples it had read
        self.survivors: dict[str, Survivor] = {}
        self.last_read_at = 0.0
        cluster.listeners.append(self._on_event)

    def start(self) -> None:
        for member in self.members:
            self.cluster.at(self.cluster.now + self.pace[member], lambda m=member: self._read_batch(m))

    def crash_at(self, victim: str, when: float) -> None:
        def crash() -> None:
            self.crashed[victim] = self.read[victim]
            self.cluster.crash(victim)

        self.cluster.at(when, crash)

    def _read_batch(self, member: str) -> None:
        if member in self.crashed:
            return
        self.read[member] = min(self.length, self.read[member] + BATCH)
        cursor = self.read[member]
        self.cluster.call(member, lambda node, now: node.set_progress(KEY, cursor, now))
        if cursor < self.length:
            self.cluster.at(self.cluster.now + self.pace[member], lambda: self._read_batch(member))
            return
        self.last_read_at = self.cluster.now
        rounds = TakeOverRounds(KEY, self.members, member, retry_pause=self.cluster.settings.probe_period)
        self.survivors[member] = Survivor(member, rounds)
        self._propose(self.survivors[member])

    def _propose(self, survivor: Survivor) -> None:
        node = self.cluster.workers[survivor.worker_id].node
        live = {m.worker_id for m in node.members()}
        proposal = survivor.rounds.propose(live, node.progress_of(KEY))
        survivor.barrier_id = proposal.barrier_id
        survivor.proposals.append(proposal.barrier_id)
        self.cluster.arrive(survivor.worker_id, proposal.barrier_id, elastic=proposal.elastic, value=proposal.value)

    def _on_event(self, worker_id: str, event: Event) -> None:
        survivor = self.survivors.get(worker_id)
        if survivor is None or survivor.decided_at is not None or survivor.error is not None:
            return
        if isinstance(event, BarrierFailed) and event.barrier_id == survivor.barrier_id:
            survivor.error = f"{event.barrier_id} failed: {event.reason.name} {event.workers}"
        elif isinstance(event, BarrierReleased) and event.barrier_id == survivor.barrier_id:
            try:
                survivor.rounds.on_result(event, self.cluster.now)
            except DatasetError as exc:
                survivor.error = str(exc)
                return
            if survivor.rounds.decision is not None:
                survivor.decided_at = self.cluster.now
            else:  # never from inside the node's event handling: the next round is an action
                when = max(self.cluster.now, survivor.rounds.not_before)
                self.cluster.at(when, lambda: self._propose(survivor))

    def settled(self) -> bool:
        """Every running worker has read its share and decided (or failed) its take-over."""
        running = [m for m in self.members if m not in self.crashed]
        return all(
            m in self.survivors and (self.survivors[m].decided_at is not None or self.survivors[m].error is not None)
            for m in running
        )

    def figures(self) -> dict[str, float | None]:
        """The scenario's figures but ``lost_workers`` (see :data:`FIGURES`)."""
        survivors = list(self.survivors.values())
        decided = [s.decided_at for s in survivors]
        decision = next((s.rounds.decision for s in survivors if s.rounds.decision is not None), None)
        lost_rounds = [sum(b.startswith("dtruntime.lost:") for b in s.proposals) for s in survivors]
        return {
            "decided_after_s": None if not decided or None in decided else max(decided) - self.last_read_at,
            "lost_rounds_max": float(max(lost_rounds, default=0)),
            "cursor_rounds_max": float(max((len(s.proposals) - n for s, n in zip(survivors, lost_rounds)), default=0)),
            "reread_samples": None if decision is None else float(
                sum(self.crashed.values()) - sum(decision.cursors)
            ),
        }

    def violations(self) -> list[str]:
        """What the module docstring says must hold, as text (empty: all held)."""
        found = [f"{s.worker_id}: {s.error}" for s in self.survivors.values() if s.error is not None]
        decisions = {s.worker_id: s.rounds.decision for s in self.survivors.values() if s.rounds.decision is not None}
        if not decisions:
            return found
        first = next(iter(decisions.values()))
        assert first is not None
        for worker_id, decision in decisions.items():
            if decision != first:
                found.append(f"{worker_id} decided {decision}, another survivor {first}")
        if sorted(first.lost) != sorted(self.crashed):
            found.append(f"agreed lost {list(first.lost)} but {sorted(self.crashed)} crashed")
        for member, cursor in first.credited.items():
            if cursor > self.crashed.get(member, 0):
                found.append(f"{member} credited with {cursor} samples, it read {self.crashed.get(member, 0)}")
        return found or self._coverage(first)

    def _coverage(self, decision: TakeOverDecision) -> list[str]:
        extra = sharding.take_over_cursors(self.assignment, decision.credited, decision.survivors)
        seen = np.zeros(TOTAL_SAMPLES, dtype=np.int64)
        for member in decision.survivors:
            for piece in self.assignment[member].pieces + extra[member].pieces:
                seen[piece.start : piece.end] += 1
        for member, cursor in decision.credited.items():
            for start, end in sharding.completed_ranges(self.assignment, member, min(cursor, self.length)):
                seen[start:end] += 1
        found = []
        if not (seen == 1).all():
            found.append(f"samples covered {sorted(set(seen.tolist()))} times, not exactly once")
        if len({extra[m].num_samples for m in decision.survivors}) != 1:
            found.append("take-over shares differ in size after padding")
        return found


def take_over(workers: int, seed: int, heartbeat_ms: int = 100, timeout_ms: int = 1000, *,
              timeline: bool = False) -> ScenarioResult:
    """A minority of workers crashes while reading an epoch; each survivor, once its own share
    is read, runs the take-over agreement over a lossy network (2 % loss and duplication).

    Checked: every survivor decides the same lost set and cursors, no lost worker is
    credited with samples it had not read, and the epoch is covered exactly once.
    """
    rng = random.Random(seed)
    result = ScenarioResult("take-over", seed, workers)
    cluster, _ = build(workers, seed, heartbeat_ms, timeout_ms, faults=FAULTS, timeline=result if timeline else None)
    run = TakeOverRun(cluster, rng)
    victims = rng.sample(run.members, rng.randint(1, max(1, (workers - 1) // 2)))
    start = cluster.now
    run.start()
    for victim in victims:  # somewhere in its own reading, after other workers may have finished theirs
        reading = run.pace[victim] * run.length / BATCH
        run.crash_at(victim, start + rng.uniform(0.05, 0.95) * reading)
    mark(cluster, result, f"{len(victims)} of {workers} workers will crash mid-epoch")
    reading_limit = 4 * max(run.pace.values()) * run.length / BATCH
    wait_for(cluster, lambda: len(run.survivors) == workers - len(victims), reading_limit)
    settled = wait_for(cluster, run.settled, DECIDE_LIMIT)
    if settled is not None:
        mark(cluster, result, "every survivor decided")
    result.metrics = {"lost_workers": float(len(victims)), **run.figures()}
    finish(cluster, result)
    result.violations += run.violations() if settled is not None else ["the survivors did not all decide"]
    return result


FIGURES: dict[str, str] = {
    "lost_workers": "workers crashed while reading their share of the epoch",
    "decided_after_s": "from the moment the last survivor finished reading its own share until every "
                       "survivor decided the take-over ('-' when some did not within 20 s)",
    "lost_rounds_max": "agreement rounds on who is lost, at the survivor that needed most (a crash while "
                       "survivors wait, or views that differ, takes another round)",
    "cursor_rounds_max": "agreement rounds on the lost workers' cursors (the furthest heard spreads)",
    "reread_samples": "samples the lost workers had read but were not credited with (their last "
                      "progress reports never reached a survivor): survivors read them again",
}
