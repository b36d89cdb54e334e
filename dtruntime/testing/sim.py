"""A deterministic simulator: many protocol nodes, one simulated clock and network.

Everything random comes from one root seed: each node gets its own ``random.Random``
seeded from it, and so does the network. Events are processed in (time, sequence)
order from a heap, and nothing iterates a set of strings, so the same seed gives the
same trace, event for event, in any process (``PYTHONHASHSEED`` does not matter).

Faults: message loss, duplication, delay (and so reordering), symmetric partitions
(groups), one-way link blocks, node pause/resume (a GC pause or a long ``torch.save``:
messages queue up and are delivered on resume), crash (messages dropped) and restart
(a fresh node with a higher incarnation joins through the seeds).

Checkpoints: :meth:`SimCluster.save` writes a rank's part (real bytes, real CRC-32C,
the production key layout) into a shared in-memory :class:`MemoryStorage` and reports
it; the worker that gets ``CommitDue`` decides it with the production
:class:`LeaderCommitter` over that store, ``commit_delay`` later (the manifest, if any,
is written then), and its answer reaches the node ``commit_delay`` after that, so a
crash can fall between the two. A worker that becomes leader runs the committer's
``recover`` (finishing in-flight steps whose parts are all there) and resolves every
committed step it returns, as the orchestrator does.

With ``codec=True`` every message is encoded and decoded on its way, as over ZeroMQ,
and the bytes are counted; scale runs may turn it off for speed. With
``join_events=False`` the nodes leave ``MemberJoined`` out of their output (the trace
and the listeners never see one): N^2 events at start-up that a scale run never reads.
Neither changes what the nodes do.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..checkpoint import layout
from ..checkpoint.integrity import crc32c
from ..checkpoint.leader import LeaderCommitter
from ..protocol import codec
from ..protocol.events import CommitDue, Event, LeaderChanged
from ..protocol.messages import CommitOutcome, MemberEntry, Message, Status
from ..protocol.node import Node
from ..protocol.outbox import Ready
from ..protocol.settings import ProtocolSettings
from .invariants import Invariants
from .storage import MemoryStorage

_DELIVER, _TICK, _ACTION = 0, 1, 2
_NEVER = float("inf")


@dataclass(frozen=True)
class NetworkFaults:
    """Per-message fault probabilities and the delay range (seconds)."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay_min: float = 0.0002
    delay_max: float = 0.002


@dataclass(slots=True)
class SimWorker:
    """Simulator-side record of one worker (the node may be replaced on restart)."""

    worker_id: str
    rank: int
    local_rank: int
    endpoint: str
    node: Node
    up: bool = True
    paused: bool = False
    held: list[Message] = field(default_factory=list)
    held_saves: list[tuple[int, bool]] = field(default_factory=list)  # (step, ok) asked while paused
    tick_at: float = _NEVER  # when the node wants its next tick; a queued tick for another time is stale
    sent: int = 0
    bytes_sent: int = 0


class SimCluster:
    """A cluster of ``workers`` simulated nodes. Time starts at 0.0 seconds."""

    def __init__(
        self,
        workers: int,
        seed: int,
        settings: ProtocolSettings,
        *,
        faults: NetworkFaults = NetworkFaults(),
        workers_per_host: int = 8,
        codec: bool = True,
        trace: bool = True,
        join_events: bool = True,
        commit_delay: float = 0.005,
        keep_last_n: int = 3,
    ) -> None:
        self.seed = seed
        self.settings = settings
        self.faults = faults
        self.world_size = workers
        self.now = 0.0
        self._root = random.Random(seed)
        self._net = random.Random(self._root.getrandbits(64))
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._codec = codec
        self._groups: dict[str, int] = {}
        self._blocked: dict[tuple[str, str], None] = {}
        self.tracing = trace
        self._join_events = join_events
        self.trace: list[str] = []
        self.invariants = Invariants(self)
        self.listeners: list[Callable[[str, Event], None]] = []
        self.commit_delay = commit_delay
        self.storage = MemoryStorage(on_manifest=self.invariants.on_manifest)
        self.committer = LeaderCommitter(self.storage, workers, keep_last_n, lambda step: {}, lambda step: None)
        self.workers: dict[str, SimWorker] = {}
        self._by_endpoint: dict[str, SimWorker] = {}
        seed_endpoint = _endpoint(0)
        for rank in range(workers):
            worker_id = f"w{rank}"
            endpoint = _endpoint(rank)
            member = MemberEntry(worker_id, rank, rank % workers_per_host, 0, Status.ALIVE, endpoint)
            node = self._new_node(member, [seed_endpoint])
            worker = SimWorker(worker_id, rank, member.local_rank, endpoint, node)
            self.workers[worker_id] = worker
            self._by_endpoint[endpoint] = worker
        for worker in self.workers.values():
            self._handle(worker, worker.node.tick(self.now))

    # -- construction ---------------------------------------------------------------

    def _new_node(self, member: MemberEntry, seeds: list[str]) -> Node:
        return Node(member, self.world_size, seeds, self.settings, random.Random(self._root.getrandbits(64)), self.now,
                    report_joins=self._join_events)

    # -- running --------------------------------------------------------------------

    def run_until(self, end: float) -> None:
        """Process every event up to and including simulated time ``end``."""
        heap, pop = self._heap, heapq.heappop
        while heap and heap[0][0] <= end:
            when, _, kind, payload = pop(heap)
            self.now = when
            if kind == _DELIVER:
                worker, message = payload
                if not worker.up:
                    continue
                if worker.paused:
                    worker.held.append(message)
                else:
                    self._handle(worker, worker.node.step(message, when))
            elif kind == _TICK:
                worker = payload
                if worker.tick_at == when and worker.up and not worker.paused:
                    worker.tick_at = _NEVER
                    self._handle(worker, worker.node.tick(when))
            else:
                payload()
        self.now = max(self.now, end)

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until_true(self, condition: Callable[[], bool], limit: float, step: float = 0.01) -> float | None:
        """Advance in ``step`` increments until ``condition()``; return the time or None at ``limit``."""
        while self.now < limit:
            if condition():
                return self.now
            self.run_until(min(limit, self.now + step))
        return self.now if condition() else None

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Schedule ``action()`` at simulated time ``when``."""
        self._push(when, _ACTION, action)

    # -- node IO ----------------------------------------------------------------------

    def _push(self, when: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, payload))

    def _handle(self, worker: SimWorker, ready: Ready) -> None:
        for endpoint, message in ready.messages:
            self._send(worker, endpoint, message)
        if ready.events:
            self._report(worker, ready.events)
        # Queue a tick at the node's deadline when it is earlier than the queued one, or
        # later than a queued one that is not yet due: the node no longer needs that one
        # (a probe acked before its ping timeout). That skips a quarter of all node inputs
        # in a fault-free run. The entry left behind is stale: run_until skips a tick
        # whose time is not the worker's tick_at.
        deadline, soonest = ready.next_deadline, self.now + 1e-6
        if deadline < soonest:
            deadline = soonest
        queued = worker.tick_at
        if deadline < queued or self.now < queued < deadline:
            worker.tick_at = deadline
            if deadline != _NEVER:
                self._push(deadline, _TICK, worker)

    def _report(self, worker: SimWorker, events: list[Event]) -> None:
        """Trace ``events``, check them, act on those the simulator plays a part in, and
        hand them to the listeners. Written for speed: this runs N^2 times at start-up
        (every node hears every join), for events only the trace and listeners read."""
        tracing, listeners, checked = self.tracing, self.listeners, Invariants.CHECKED
        for event in events:
            kind = event.__class__  # events are final classes
            if tracing:
                self.trace.append(f"{self.now:.6f} {worker.worker_id} {event!r}")
            if kind in checked:
                self.invariants.on_event(worker.worker_id, event)
                if kind is LeaderChanged and event.leader_id == worker.worker_id:  # type: ignore[union-attr]
                    self._recover_later(worker, worker.node)
            elif kind is CommitDue:
                self._decide_later(worker, worker.node, event)  # type: ignore[arg-type]
            for listener in listeners:
                listener(worker.worker_id, event)

    def _send(self, source: SimWorker, endpoint: str, message: Message) -> None:
        source.sent += 1
        if self._codec:
            data = codec.encode(message)
            source.bytes_sent += len(data)
            message = codec.decode(data)
        target = self._by_endpoint.get(endpoint)
        if target is None:
            return
        if (self._groups or self._blocked) and not self._link_up(source.worker_id, target.worker_id):
            return
        net, faults = self._net, self.faults
        if net.random() < faults.loss:
            return
        copies = 2 if net.random() < faults.duplicate else 1
        low, span, heap = faults.delay_min, faults.delay_max - faults.delay_min, self._heap
        for _ in range(copies):
            delay = low + span * net.random()  # net.uniform(delay_min, delay_max), inlined: the same float
            self._seq += 1
            heapq.heappush(heap, (self.now + delay, self._seq, _DELIVER, (target, message)))

    def _link_up(self, source: str, target: str) -> bool:
        if self._groups and self._groups.get(source, 0) != self._groups.get(target, 0):
            return False
        return (source, target) not in self._blocked

    # -- local requests ---------------------------------------------------------------

    def arrive(
        self, worker_id: str, barrier_id: str, *, timeout: float | None = None, elastic: bool = False, value: str = ""
    ) -> None:
        """``worker_id`` starts waiting at ``barrier_id`` (an agreement on ``value`` when it is
        not empty); skipped while it is down or paused."""
        worker = self.workers[worker_id]
        if not worker.up or worker.paused:
            return
        self.invariants.on_arrive(worker_id, barrier_id, worker.node.waits.generation(barrier_id))
        self._handle(worker, worker.node.arrive(barrier_id, self.now, timeout=timeout, elastic=elastic, value=value))

    def call(self, worker_id: str, request: Callable[[Node, float], Ready]) -> None:
        """Run a local request ``request(node, now)`` on ``worker_id`` (skipped while it is down or paused)."""
        worker = self.workers[worker_id]
        if worker.up and not worker.paused:
            self._handle(worker, request(worker.node, self.now))

    def save(self, worker_id: str, step: int, *, ok: bool = True) -> None:
        """``worker_id`` writes its part of ``step`` (``ok=False``: the write fails) and reports it."""
        worker = self.workers[worker_id]
        if not worker.up:
            return
        if worker.paused:  # a paused process saves when it resumes, like a slow rank
            worker.held_saves.append((step, ok))
            return
        data = f"step {step} rank {worker.rank} incarnation {worker.node.membership.me.incarnation}".encode()
        checksum = crc32c(data)
        if ok:
            self.storage.write_part(layout.part_key(step, worker.rank, "none", checksum), data)
            self.invariants.on_part(step, worker.rank)
        ready = worker.node.part_written(step, worker.rank, len(data), checksum, "none", self.now, ok=ok)
        self._handle(worker, ready)

    @property
    def manifests(self) -> dict[int, None]:
        """Steps whose manifest was ever written (retention may have deleted it since)."""
        return self.storage.manifests_written

    def _decide_later(self, worker: SimWorker, node: Node, due: CommitDue) -> None:
        def decide() -> None:
            if self._still(worker, node, decide):
                outcome, missing = self.committer.decide(due.step, due.reports, due.missing_ranks)
                self._note(f"{worker.worker_id} decides step {due.step}: {outcome.name}")
                self.at(self.now + self.commit_delay, lambda: answer(outcome, missing))

        def answer(outcome: CommitOutcome, missing: tuple[int, ...]) -> None:
            if self._still(worker, node, lambda: answer(outcome, missing)):
                self._handle(worker, node.commit_resolved(due.step, outcome, self.now, missing))

        self.at(self.now + self.commit_delay, decide)

    def _recover_later(self, worker: SimWorker, node: Node) -> None:
        def recover() -> None:
            if not self._still(worker, node, recover) or not node.is_leader:
                return
            for step in self.committer.recover():
                self._handle(worker, node.commit_resolved(step, CommitOutcome.COMMITTED, self.now))

        self.at(self.now + self.commit_delay, recover)

    def _still(self, worker: SimWorker, node: Node, action: Callable[[], None]) -> bool:
        """Whether ``node`` still runs (a paused one retries ``action`` a little later)."""
        if not worker.up or worker.node is not node:
            return False
        if worker.paused:
            self.at(self.now + self.commit_delay, action)
            return False
        return True

    # -- faults -----------------------------------------------------------------------

    def crash(self, worker_id: str) -> None:
        worker = self.workers[worker_id]
        worker.up, worker.paused = False, False
        worker.held.clear()
        worker.held_saves.clear()
        self._note(f"crash {worker_id}")

    def restart(self, worker_id: str) -> None:
        """Start a fresh node for a crashed worker, at an incarnation above any earlier one."""
        worker = self.workers[worker_id]
        assert not worker.up, "restart only a crashed worker"
        member = MemberEntry(
            worker_id, worker.rank, worker.local_rank, int(self.now * 1000) + 1, Status.ALIVE, worker.endpoint
        )
        seeds = [w.endpoint for w in list(self.workers.values())[:4] if w.worker_id != worker_id]
        worker.node = self._new_node(member, seeds)
        worker.up, worker.paused, worker.tick_at = True, False, _NEVER
        self._note(f"restart {worker_id}")
        self._handle(worker, worker.node.tick(self.now))

    def pause(self, worker_id: str) -> None:
        self.workers[worker_id].paused = True
        self._note(f"pause {worker_id}")

    def resume(self, worker_id: str) -> None:
        worker = self.workers[worker_id]
        if not worker.paused:
            return
        worker.paused = False
        worker.tick_at = _NEVER
        self._note(f"resume {worker_id}")
        held, worker.held = worker.held, []
        for message in held:
            if worker.up and not worker.paused:
                self._handle(worker, worker.node.step(message, self.now))
        if worker.up:
            self._handle(worker, worker.node.tick(self.now))
        saves, worker.held_saves = worker.held_saves, []
        for step, ok in saves:
            self.save(worker_id, step, ok=ok)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Split the network: messages flow only within a group (unlisted workers: group 0)."""
        group_lists = [list(group) for group in groups]
        self._groups = {w: index for index, group in enumerate(group_lists, start=1) for w in group}
        self._note(f"partition {group_lists}")

    def block(self, source: str, target: str) -> None:
        """Drop every message from ``source`` to ``target`` (one way)."""
        self._blocked[(source, target)] = None
        self._note(f"block {source}->{target}")

    def unblock(self, source: str, target: str) -> None:
        self._blocked.pop((source, target), None)
        self._note(f"unblock {source}->{target}")

    def heal(self) -> None:
        """Remove every partition and link block."""
        self._groups = {}
        self._blocked = {}
        self._note("heal")

    def _note(self, text: str) -> None:
        if self.tracing:
            self.trace.append(f"{self.now:.6f} sim {text}")

    # -- observation --------------------------------------------------------------------

    def up_workers(self) -> list[SimWorker]:
        return [w for w in self.workers.values() if w.up and not w.paused]

    def converged(self) -> bool:
        """Every running worker sees the same leader and exactly the running workers as live."""
        up = self.up_workers()
        if not up:
            return False
        expected = {w.worker_id for w in up}
        leader = up[0].node.leader_id
        if leader is None or leader not in expected or any(w.node.leader_id != leader for w in up):
            return False
        suspect = Status.SUSPECT
        for worker in up:
            # The live ids (distinct: dict keys) are exactly ``expected`` when there are as
            # many and all are in it. ``is_live`` is inlined: N^2 checks at 10,000 workers.
            live = [w for w, e in worker.node.membership.members.items() if e.status <= suspect]
            if len(live) != len(expected) or not expected.issuperset(live):
                return False
        return True

    def leaders(self) -> dict[str, str | None]:
        return {w.worker_id: w.node.leader_id for w in self.up_workers()}


def _endpoint(rank: int) -> str:
    return f"sim://w{rank}"
