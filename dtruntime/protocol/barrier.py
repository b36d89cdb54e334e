"""Barriers: the leader's bookkeeping (:class:`BarrierBook`) and each waiter's (:class:`Waits`).

A barrier is keyed by ``(barrier_id, generation)``: each node counts how often it has
finished a barrier id, so an id can be reused (``"step"`` every step) and a re-sent
arrival can never be mistaken for the next use.

Leader rules (``BarrierBook``):

* A barrier opens when its first member started waiting: each arrival says how long
  its sender has waited, so a new leader that inherits re-sent arrivals dates the
  opening before the old leader's death. Its expected members are the members live at
  the opening (members this leader saw die after it count as expected), plus any that
  join while it is open; it never releases before the leader has seen ``world_size``
  distinct members (a start-up barrier waits for the whole world). Members already
  dead at the opening are excluded and named.
* Non-elastic: an expected member declared DEAD while the barrier is open fails it with
  ``LOST`` naming the dead (the next barrier then expects the survivors).
* A result names the dead it is about, and carries the leader's entries of those that
  died while it was open (``BarrierResult.verdicts``): every waiter's view then agrees
  with the outcome, even where the leader's DEAD gossip has not arrived yet.
* Elastic: an expected member that dies is dropped; the barrier releases when every
  live expected member arrived (and a quorum is live), naming the excluded.
* A timeout is the caller's deadline: each arrival carries its timeout and how long its
  sender has waited, so the leader dates the deadline from when the caller started (a
  leader elected, or taking over, after the call does not push it back). The leader
  fails the barrier with ``TIMEOUT`` naming who had not arrived ``DEADLINE_MARGIN``
  before that deadline, so its answer reaches the waiters by the deadline.
* Agreement: each arrival carries a value ("" for a plain barrier). A release compares
  the values of the expected members: the lowest-ranked one is the reference, and the
  result names every member whose value differs from it. Deciding that is the caller's
  business (the dataset registry raises, naming the field).
* A decided result is remembered (bounded history) and re-sent to any late or repeated
  arrival. A new leader learns results from followers' reports of recent results, so a
  release lost together with the old leader still reaches every waiter.

Invariant (checked by the simulator): a ``RELEASED`` result names every world member it
did not wait for, and every other member had arrived.

Bounded state: a waiter remembers the next generation of at most
``GENERATION_MEMORY`` barrier ids (``f"epoch_{n}"`` ids are distinct forever). Past
that, the least recently finished id is forgotten and, if used again, starts at
generation 0 like a new id (so a restarted worker, which knows no ids, still agrees
with the others on new ids). That is safe because a reused ``(id, 0)`` could only be
answered from a stale result if the leader still remembered it, and the leader keeps
only the last ``barrier_history`` (4096) decisions while the waiter finished
``GENERATION_MEMORY`` (16384) other ids since: more than 12,000 of those would have to
have failed without a leader's decision. The leader's open and decided barriers and the
waiter's recent results (``RECENT_RESULTS``) are bounded too.

Waiter rules (``Waits``): arrive once per generation; re-send to the leader every
``resend_periods`` and to every new leader; a local deadline ``DEADLINE_MARGIN`` after
the caller's covers a leader that never answers (none elected, or cut off), and says
which. Either way a wait with a timeout ends within ``DEADLINE_MARGIN`` of its deadline.
The price of that precision: a release decided just before the deadline that spends
longer than ``2 * DEADLINE_MARGIN`` in transit (or is lost and not re-sent in time)
reaches a waiter that has already given up, which reports a timeout while others
passed. That is safe (nobody passes early) and only happens in the last 100 ms of a
timeout. A member leaving gracefully relays its
newest RELEASED result to every peer before its LEFT announcement: when every member
exits right after a final barrier, a waiter whose release is still queued would
otherwise see the others leave first, lose its quorum and fail a barrier that passed.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ProtocolError
from .events import BarrierFailed, BarrierReleased, FailureCause
from .membership import Membership
from .messages import Arrive, BarrierResult, Outcome
from .outbox import Outbox
from .settings import ProtocolSettings

BarrierKey = tuple[str, int]

RECENT_RESULTS = 16  # results a waiter reports to a new leader
GENERATION_MEMORY = 16384  # barrier ids whose next generation a waiter remembers
# Seconds: the leader decides a timeout this long before the caller's deadline (time for
# its answer to arrive), and a waiter with no answer gives up this long after it.
DEADLINE_MARGIN = 0.05
RELEASE_SAMPLES = 1024  # release latencies kept until an observer takes them


@dataclass(slots=True)
class _Open:
    elastic: bool
    expected: dict[str, None]  # insertion-ordered set of worker ids
    opened_at: float  # leader-clock time when the first member started waiting
    arrived: dict[str, int] = field(default_factory=dict)  # worker_id -> incarnation
    values: dict[str, str] = field(default_factory=dict)  # worker_id -> value it arrived with
    deadline: float = float("inf")
    # The scans of the view below cost O(members) and would run at every arrival (O(N^2)
    # a barrier). They depend only on the view's liveness (``Membership.version``) and on
    # ``opened_at``, so they run again only when one of those changed since ``scanned``;
    # in between, ``waiting`` (expected members that have not arrived) is kept up to date.
    scanned: tuple[int, float] = (-1, float("nan"))
    waiting: dict[str, None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """A result to deliver to the members that had arrived."""

    result: BarrierResult
    arrived: tuple[str, ...]


class BarrierBook:
    """Leader-side state of every open barrier. Cleared when leadership is lost."""

    # Slotted: every node has one, and a simulation touches 10,000 of them in turn.
    __slots__ = ("world_size", "settings", "_open", "_decided", "_deadlines", "decisions",
                 "release_latencies")

    def __init__(self, world_size: int, settings: ProtocolSettings) -> None:
        self.world_size = world_size
        self.settings = settings
        self._open: dict[BarrierKey, _Open] = {}
        self._decided: OrderedDict[BarrierKey, BarrierResult] = OrderedDict()
        self._deadlines: list[tuple[float, str, int]] = []
        self.decisions: list[Decision] = []  # drained by the node
        # Seconds from the moment the last member started waiting to the release, for each
        # barrier an arrival released here (an observer takes them; the oldest go first).
        self.release_latencies: list[float] = []

    def decided(self, key: BarrierKey) -> BarrierResult | None:
        return self._decided.get(key)

    def open_barriers(self) -> list[tuple[BarrierKey, float, tuple[str, ...], tuple[str, ...], bool]]:
        """(key, opened_at, expected, arrived, elastic) of every open barrier, for a status snapshot."""
        return [(key, b.opened_at, tuple(b.expected), tuple(b.arrived), b.elastic) for key, b in self._open.items()]

    def clear_open(self) -> None:
        """Forget open barriers (on losing leadership); waiters re-send to the next leader."""
        self._open.clear()
        self._deadlines.clear()

    def arrive(self, message: Arrive, now: float, view: Membership) -> BarrierResult | None:
        """Record an arrival; return the result at once if the barrier is already decided."""
        key = (message.barrier_id, message.generation)
        result = self._decided.get(key)
        if result is not None:
            return result
        member = view.get(message.sender)
        if member is None or not member.is_live or message.incarnation < member.incarnation:
            return None  # a stale incarnation: its live successor re-sends
        barrier = self._open.get(key)
        started = now - message.waited_ms / 1000.0
        if barrier is None:
            barrier = self._open[key] = _Open(message.elastic, {}, started)
        barrier.opened_at = min(barrier.opened_at, started)
        if barrier.scanned != (view.version, barrier.opened_at):
            for worker_id, entry in view.members.items():
                if worker_id not in barrier.expected and (
                    entry.is_live or view.dead_since.get(worker_id, float("-inf")) >= barrier.opened_at
                ):
                    barrier.expected[worker_id] = None
        barrier.arrived[message.sender] = message.incarnation
        barrier.waiting.pop(message.sender, None)
        barrier.values[message.sender] = message.value
        if message.timeout_ms:
            deadline = started + message.timeout_ms / 1000.0 - DEADLINE_MARGIN
            if deadline < barrier.deadline:
                barrier.deadline = deadline
                heapq.heappush(self._deadlines, (deadline, key[0], key[1]))
        self._evaluate(key, barrier, view)
        if key not in self._open:
            decided = self._decided.get(key)
            if decided is not None and decided.outcome == Outcome.RELEASED:
                self._sample_release(max(0.0, now - started))
        return None

    def _sample_release(self, seconds: float) -> None:
        samples = self.release_latencies
        samples.append(seconds)
        if len(samples) > RELEASE_SAMPLES:
            del samples[: len(samples) - RELEASE_SAMPLES]

    def take_release_latencies(self) -> list[float]:
        """The release latencies recorded since the last call (at most ``RELEASE_SAMPLES``)."""
        samples, self.release_latencies = self.release_latencies, []
        return samples

    def missing(self, key: BarrierKey) -> tuple[str, ...] | None:
        """Who has not arrived at open barrier ``key`` (None: not open here)."""
        barrier = self._open.get(key)
        if barrier is None:
            return None
        return tuple(w for w in barrier.expected if w not in barrier.arrived)

    def learn(self, result: BarrierResult) -> None:
        """Adopt a result decided by an earlier leader (reported by a follower)."""
        key = (result.barrier_id, result.generation)
        if key in self._decided:
            return
        barrier = self._open.pop(key, None)
        self._drop_stale_deadlines()
        self._decide(key, result, tuple(barrier.arrived) if barrier else ())

    def on_view_change(self, view: Membership) -> None:
        for key, barrier in list(self._open.items()):
            self._evaluate(key, barrier, view)

    def tick(self, now: float, view: Membership) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, barrier_id, generation = heapq.heappop(self._deadlines)
            key = (barrier_id, generation)
            barrier = self._open.get(key)
            if barrier is None or barrier.deadline != deadline:
                continue
            missing = tuple(w for w in barrier.expected if w not in barrier.arrived)
            self._close(key, barrier, view, Outcome.TIMEOUT, missing)

    def _drop_stale_deadlines(self) -> None:
        """Pop deadlines of barriers already decided off the top of the heap.

        Without this, every barrier with a timeout leaves its deadline in the heap until
        that deadline passes (rate x timeout entries: 150,000 at 2,500 barriers/s with
        ``timeout=60``), and the node wakes at each for nothing. Barriers decide roughly in
        deadline order, so the heap stays near the number of open barriers.
        """
        heap = self._deadlines
        while heap:
            deadline, barrier_id, generation = heap[0]
            barrier = self._open.get((barrier_id, generation))
            if barrier is not None and barrier.deadline == deadline:
                return
            heapq.heappop(heap)

    @property
    def has_deadlines(self) -> bool:
        """Whether an open barrier has a timeout pending (else :meth:`next_deadline` is inf)."""
        return bool(self._deadlines)

    def next_deadline(self) -> float:
        return self._deadlines[0][0] if self._deadlines else float("inf")

    def _evaluate(self, key: BarrierKey, barrier: _Open, view: Membership) -> None:
        expected = barrier.expected
        if barrier.scanned != (view.version, barrier.opened_at):
            for worker_id, entry in view.members.items():
                if entry.is_live and worker_id not in expected:
                    expected[worker_id] = None  # joined while the barrier was open
            dead = tuple(w for w in expected if not view.is_live(w))
            if dead and not barrier.elastic:
                self._close(key, barrier, view, Outcome.LOST, dead)
                return
            for worker_id in dead:
                del expected[worker_id]
            barrier.waiting = {w: None for w in expected if w not in barrier.arrived}
            barrier.scanned = (view.version, barrier.opened_at)
        if len(view.members) < self.world_size or barrier.waiting:
            return
        if barrier.elastic and view.live_count < view.quorum:
            return
        excluded = tuple(w for w in view.members if w not in expected)
        self._close(key, barrier, view, Outcome.RELEASED, excluded, _agreement(barrier, view))

    def _close(
        self, key: BarrierKey, barrier: _Open, view: Membership, outcome: Outcome, workers: tuple[str, ...],
        agreement: tuple[str, str, tuple[str, ...], str] = ("", "", (), ""),
    ) -> None:
        del self._open[key]
        self._drop_stale_deadlines()
        verdicts = tuple(
            entry for entry in map(view.get, workers)
            if entry is not None and not entry.is_live
            and view.dead_since.get(entry.worker_id, float("-inf")) >= barrier.opened_at
        )  # only deaths during this barrier: a release does not repeat the job's whole history
        result = BarrierResult(key[0], key[1], outcome, barrier.elastic, workers, *agreement, verdicts)
        self._decide(key, result, tuple(barrier.arrived))

    def _decide(self, key: BarrierKey, result: BarrierResult, arrived: tuple[str, ...]) -> None:
        self._decided[key] = result
        while len(self._decided) > self.settings.barrier_history:
            self._decided.popitem(last=False)
        self.decisions.append(Decision(result, arrived))


def _agreement(barrier: _Open, view: Membership) -> tuple[str, str, tuple[str, ...], str]:
    """(reference, its value, members whose value differs, the first one's value).

    All empty for a plain barrier (every value ""), which keeps its release small.
    """
    values = {w: v for w, v in barrier.values.items() if w in barrier.expected}
    if not any(values.values()):
        return ("", "", (), "")

    def rank(worker_id: str) -> tuple[int, str]:
        entry = view.get(worker_id)
        return (entry.rank if entry is not None else view.world_size, worker_id)

    ordered = sorted(values, key=rank)
    reference = ordered[0]
    differing = tuple(w for w in ordered if values[w] != values[reference])
    return reference, values[reference], differing, values[differing[0]] if differing else ""


@dataclass(slots=True)
class _Wait:
    generation: int
    elastic: bool
    timeout_ms: int
    local_deadline: float
    started: float
    value: str = ""


class Waits:
    """This node's own barrier waits."""

    # Slotted: every node has one, and a simulation touches 10,000 of them in turn.
    __slots__ = ("worker_id", "settings", "_out", "_waits", "_generations", "recent", "next_resend",
                 "missing")

    def __init__(self, worker_id: str, settings: ProtocolSettings, outbox: Outbox) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self._out = outbox
        self._waits: dict[str, _Wait] = {}
        self._generations: OrderedDict[str, int] = OrderedDict()  # least recently finished first
        self.recent: OrderedDict[BarrierKey, BarrierResult] = OrderedDict()
        self.next_resend = float("inf")
        self.missing: dict[str, tuple[str, ...]] = {}  # barrier -> who the leader last said is missing

    def __bool__(self) -> bool:
        return bool(self._waits)

    def generation(self, barrier_id: str) -> int:
        """The generation this node's next (or current) wait at ``barrier_id`` has."""
        wait = self._waits.get(barrier_id)
        return wait.generation if wait is not None else self._generations.get(barrier_id, 0)

    def start(
        self, barrier_id: str, now: float, timeout: float | None, elastic: bool, incarnation: int, value: str = ""
    ) -> Arrive:
        """Begin waiting (arriving with ``value``); return the arrival to deliver to the leader."""
        if barrier_id in self._waits:
            raise ProtocolError(f"already waiting at barrier {barrier_id!r}")
        if timeout is not None and timeout <= 0:
            raise ProtocolError(f"barrier timeout must be positive, got {timeout!r}")
        timeout_ms = 0 if timeout is None else max(1, round(timeout * 1000))
        deadline = float("inf") if timeout is None else now + timeout + DEADLINE_MARGIN
        wait = _Wait(self._generations.get(barrier_id, 0), elastic, timeout_ms, deadline, now, value)
        self._waits[barrier_id] = wait
        self.next_resend = min(self.next_resend, now + self.settings.resend_periods * self.settings.probe_period)
        return self._arrival(barrier_id, wait, incarnation, now)

    def _arrival(self, barrier_id: str, wait: _Wait, incarnation: int, now: float) -> Arrive:
        waited_ms = max(0, round((now - wait.started) * 1000))
        return Arrive(
            self.worker_id, incarnation, barrier_id, wait.generation, wait.elastic, wait.timeout_ms, waited_ms,
            wait.value,
        )

    def open_waits(self) -> list[tuple[str, int, float, bool]]:
        """(barrier_id, generation, started, elastic) of every wait in progress."""
        return [(barrier_id, w.generation, w.started, w.elastic) for barrier_id, w in self._waits.items()]

    def arrivals(self, incarnation: int, now: float) -> list[Arrive]:
        return [self._arrival(barrier_id, wait, incarnation, now) for barrier_id, wait in self._waits.items()]

    def resend_due(self, now: float) -> bool:
        if not self._waits or now < self.next_resend:
            return False
        self.next_resend = now + self.settings.resend_periods * self.settings.probe_period
        return True

    def on_result(self, result: BarrierResult) -> None:
        """Finish the matching wait, if any; duplicates and stale results are ignored."""
        key = (result.barrier_id, result.generation)
        wait = self._waits.get(result.barrier_id)
        if wait is None or wait.generation != result.generation:
            return
        self._finish(result.barrier_id, wait)
        self.recent[key] = result
        while len(self.recent) > RECENT_RESULTS:
            self.recent.popitem(last=False)
        if result.outcome == Outcome.RELEASED and self.worker_id not in result.workers:
            self._out.emit(
                BarrierReleased(
                    result.barrier_id, result.generation, result.workers,
                    result.reference, result.reference_value, result.differing, result.differing_value,
                )
            )
        elif result.outcome == Outcome.RELEASED:
            self._out.emit(
                BarrierFailed(result.barrier_id, result.generation, FailureCause.EXCLUDED, (),
                              "released without this worker")
            )
        else:
            self._out.emit(
                BarrierFailed(result.barrier_id, result.generation, FailureCause(result.outcome), result.workers)
            )

    def latest_release(self) -> BarrierResult | None:
        """The newest RELEASED result this node received, if any (relayed when leaving)."""
        for result in reversed(self.recent.values()):
            if result.outcome == Outcome.RELEASED:
                return result
        return None

    def fail_all(self, cause: FailureCause, detail: str) -> None:
        for barrier_id, wait in list(self._waits.items()):
            self._finish(barrier_id, wait)
            self._out.emit(BarrierFailed(barrier_id, wait.generation, cause, (), detail))

    def tick(self, now: float, no_answer: Callable[[], str]) -> None:
        """Give up the waits past their local deadline; ``no_answer()`` says why (whom they waited on)."""
        for barrier_id, wait in list(self._waits.items()):
            if now >= wait.local_deadline:
                self._finish(barrier_id, wait)
                self._out.emit(BarrierFailed(barrier_id, wait.generation, FailureCause.TIMEOUT, (), no_answer()))

    def next_deadline(self) -> float:
        if not self._waits:
            return float("inf")
        return min(self.next_resend, min(w.local_deadline for w in self._waits.values()))

    def on_pending(self, barrier_id: str, generation: int, missing: tuple[str, ...]) -> None:
        """The leader says the current wait at ``barrier_id`` still misses ``missing``."""
        wait = self._waits.get(barrier_id)
        if wait is not None and wait.generation == generation:
            self.missing[barrier_id] = missing

    def _finish(self, barrier_id: str, wait: _Wait) -> None:
        self.missing.pop(barrier_id, None)
        del self._waits[barrier_id]
        generations = self._generations
        generations[barrier_id] = wait.generation + 1
        generations.move_to_end(barrier_id)
        if len(generations) > GENERATION_MEMORY:
            generations.popitem(last=False)
        if not self._waits:
            self.next_resend = float("inf")
