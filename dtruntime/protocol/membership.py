"""SWIM-style membership: probes, suspicion with refutation, gossip dissemination.

Each probe period a node pings one member, taken round-robin from a shuffled list
(so every member is probed by everyone at least once every N periods, and on average
by someone every period). No ``Ack`` within ``ping_timeout`` -> ``indirect_probes``
helpers ping the target for us (a lossy link alone does not get a member suspected).
No ack by the end of the period -> the target becomes SUSPECT. A suspect that does not
refute within ``heartbeat_timeout`` becomes DEAD. The suspect refutes by raising its
incarnation, which every node accepts because a higher incarnation always wins.

News (changed entries) rides on probe messages: at most ``piggyback_max`` items per
message, each sent ``retransmit_mult * ceil(log2(N + 1))`` times, fewest-sent first.
So a node sends a constant number of messages per period whatever N (SWIM, Lifeguard),
and news reaches everyone in O(log N) periods. Every gossip also carries the sender's
own entry, so a node learns of a peer the moment it hears from it.

Healing: a DEAD member is never probed, so after a partition both sides could ignore
each other forever. Every ``reconnect_periods`` a node pings one random DEAD member;
and a message to a member we think SUSPECT or DEAD always carries that verdict, so a
live member hears it and refutes (SWIM's rejoin). A member seeing itself declared DEAD
rejoins at a higher incarnation and reports ``DeclaredDead`` to its API.

A stranger (an unknown worker id) is admitted with a rank inside the world that no
known member holds (or, ALIVE and from the worker itself, whose holder is gone). A
stranger already DEAD or LEFT is admitted too: a node that joins (or restarts) after a
worker died learns of it only that way, and without it that rank would look "never
joined" for good (barriers never see the whole world, commits wait for the rank).

Invariants: entries only move up in ``(incarnation, status)`` precedence; applying the
same entry twice changes nothing (handlers are idempotent under duplication); iteration
order is insertion order (never a set of strings), so a seeded run replays exactly.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from .events import DeclaredDead, MemberJoined, WorkerLost
from .messages import Ack, Gossip, MemberEntry, Ping, PingReq, Status
from .news import take_news
from .outbox import Outbox
from .settings import ProtocolSettings
from .shuffle import shuffle

GossipFactory = Callable[[str], Gossip]


@dataclass(slots=True)
class _Probe:
    target: str
    incarnation: int
    seq: int
    started: float
    acked: bool = False
    indirect_sent: bool = False


@dataclass(slots=True)
class _Relay:
    requester: str
    requester_endpoint: str
    requester_seq: int
    target: str
    expires: float


class RankHolders:
    """Rank -> the ids of every worker ever seen at that rank (never shrinks).

    One slot per rank of the world, 8 bytes each, because every node keeps one and a
    simulated 10,000-worker cluster has 10^8 of them. A slot is ``None`` (nobody seen),
    a worker id (the usual case: one holder and no allocation of its own) or a tuple of
    ids in first-seen order (a rank taken over by a restarted worker under a new id).
    Ranks outside ``[0, world_size)`` hold nobody.
    """

    __slots__ = ("slots",)

    def __init__(self, world_size: int) -> None:
        self.slots: list[str | tuple[str, ...] | None] = [None] * world_size

    def add(self, rank: int, worker_id: str) -> None:
        slot = self.slots[rank]
        if slot is None:
            self.slots[rank] = worker_id
        elif isinstance(slot, str):
            if slot != worker_id:
                self.slots[rank] = (slot, worker_id)
        elif worker_id not in slot:
            self.slots[rank] = slot + (worker_id,)

    def in_rank_order(self, members: dict[str, MemberEntry]) -> Iterator[MemberEntry]:
        """The current entry of every member of ``members`` whose rank is in the world,
        each once: ascending rank, and at one rank ascending worker id.

        ``members`` must be the view this index was filled from (every member is held at
        its current rank). Lazy: a caller that wants the first match stops early.
        """
        for rank, slot in enumerate(self.slots):
            if slot is None:
                continue
            if slot.__class__ is str:
                entry = members.get(slot)  # type: ignore[arg-type]
                if entry is not None and entry.rank == rank:
                    yield entry
                continue
            for worker_id in sorted(slot):  # type: ignore[arg-type]
                entry = members.get(worker_id)
                if entry is not None and entry.rank == rank:
                    yield entry

    def holders(self, rank: int) -> tuple[str, ...]:
        slot = self.slots[rank] if 0 <= rank < len(self.slots) else None
        if slot is None:
            return ()
        return (slot,) if isinstance(slot, str) else slot

    def unseen(self) -> list[int]:
        """Ranks nobody was ever seen at, ascending."""
        return [rank for rank, slot in enumerate(self.slots) if slot is None]


class Membership:
    """The membership view of one node. Not thread-safe; driven by :class:`Node`."""

    # Slotted: every node has one, and a simulation touches 10,000 of them in turn.
    __slots__ = ("worker_id", "report_joins", "world_size", "rejected", "settings", "_rng", "_out", "members",
                 "_by_rank", "live_count", "_vacated", "quorum", "_news", "_suspicions", "_dead",
                 "dead_since", "_probe_order", "_probe_index", "_probe", "_relays", "_seq", "_periods",
                 "_next_probe_at", "changed", "declared_dead", "joins", "version", "revision", "heard")

    def __init__(
        self,
        me: MemberEntry,
        world_size: int,
        settings: ProtocolSettings,
        rng: random.Random,
        outbox: Outbox,
        now: float,
        *,
        report_joins: bool = True,
    ) -> None:
        self.worker_id = me.worker_id
        self.report_joins = report_joins  # emit MemberJoined (off: a driver that never reads them)
        self.world_size = world_size
        self.rejected = 0  # entries about unknown workers that could not be members
        self.settings = settings
        self._rng = rng
        self._out = outbox
        self.members: dict[str, MemberEntry] = {me.worker_id: me}
        self._by_rank = RankHolders(world_size)
        self._by_rank.add(me.rank, me.worker_id)
        self.live_count = 1
        self._vacated: set[int] = set()  # ranks whose newest holder left cleanly (LEFT)
        # A majority of the voting world: ``world_size`` less the ranks vacated by a clean
        # leave (their newest holder LEFT and nobody live holds them); kept up to date by
        # _update_vacated, as it is read after every input. A crash leaves its rank voting
        # (its silence counts against the quorum, so a minority partition never leads); a
        # clean leave is an explicit, final word of that incarnation, so it shrinks the
        # world: half a job whose other half's launcher stopped its workers (one
        # SIGKILLed, the rest told to leave) keeps a quorum. A view that has not heard of
        # a leave yet demands the larger quorum, which is the safe side. A restarted
        # holder of the rank takes its vote back.
        self.quorum = world_size // 2 + 1
        self._news: dict[str, list] = {}  # worker_id -> [entry, times sent]
        self._suspicions: list[tuple[float, int, str, int]] = []  # (deadline, seq, id, incarnation)
        self._dead: dict[str, None] = {}  # DEAD (not LEFT) members, for reconnect pings
        self.dead_since: dict[str, float] = {}  # when this node saw each non-live member go
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._seq = 0
        self._periods = 0
        # Desynchronise nodes started together: first probe somewhere in the first period.
        self._next_probe_at = now + rng.random() * settings.probe_period
        self.changed = False  # set when any member's liveness changed; cleared by the node
        self.declared_dead = False  # set when this node learned it was declared DEAD
        self.joins = 0  # members that became live here (new, or back at a new incarnation)
        self.version = 0  # bumped on every liveness change and new member, for caches of derived facts
        self.revision = 0  # bumped on every change of any entry (suspicions and refutations too)
        self.heard: dict[str, float] = {}  # member -> when a message from it last arrived here

    # -- view -----------------------------------------------------------------

    @property
    def me(self) -> MemberEntry:
        return self.members[self.worker_id]

    def get(self, worker_id: str) -> MemberEntry | None:
        return self.members.get(worker_id)

    def is_live(self, worker_id: str) -> bool:
        entry = self.members.get(worker_id)
        return entry is not None and entry.is_live

    def by_rank(self) -> Iterator[MemberEntry]:
        """Every member, by ascending ``(rank, worker_id)``, from the rank index: lazy, so
        a search for the first match costs the length of the prefix it walks, not O(N)."""
        return self._by_rank.in_rank_order(self.members)

    def live_members(self) -> list[MemberEntry]:
        return [entry for entry in self.members.values() if entry.is_live]

    def _update_vacated(self, rank: int) -> None:
        """Re-derive whether ``rank`` is vacated, after an entry of one of its holders
        changed, and :attr:`quorum` with it (the only place either changes)."""
        members = self.members
        entries = [members[w] for w in self._by_rank.holders(rank) if w in members and members[w].rank == rank]
        if entries and entries[-1].status == Status.LEFT and not any(e.is_live for e in entries):
            self._vacated.add(rank)
        else:
            self._vacated.discard(rank)
        self.quorum = (self.world_size - len(self._vacated)) // 2 + 1

    def describe_absent(self) -> str:
        """Who of the expected world is not live in this view, by rank: ``w1 (rank 1) lost,
        w2 (rank 2) left, rank 3 never joined`` ("" when everyone is live). For error messages."""
        gone = sorted((entry.rank, entry.worker_id, entry.status) for entry in self.members.values()
                      if not entry.is_live)
        parts = [f"{worker_id} (rank {rank}) {'left' if status == Status.LEFT else 'lost'}"
                 for rank, worker_id, status in gone]
        unseen = self._by_rank.unseen()
        if unseen:
            shown = ", ".join(map(str, unseen[:8])) + (f" and {len(unseen) - 8} more" if len(unseen) > 8 else "")
            parts.append(f"rank{'s' if len(unseen) > 1 else ''} {shown} never joined")
        return ", ".join(parts)

    def describe_quorum(self, needed: int) -> str:
        """``only 1 of the 3 workers is live here, 2 are needed; not live: ...`` (no quorum)."""
        live = self.live_count
        verb = "is" if live == 1 else "are"
        absent = self.describe_absent()
        voting = self.world_size - len(self._vacated)
        world = f"{voting} voting" if voting != self.world_size else f"the {self.world_size}"
        return (f"only {live} of {world} workers {verb} live here, {needed} are needed"
                + (f"; not live: {absent}" if absent else ""))

    def apply(self, entry: MemberEntry, now: float, *, news: bool = True, direct: bool = False) -> None:
        """Merge one entry into the view (idempotent, monotone in precedence).

        ``direct`` marks a worker's own entry, received from that worker.
        """
        if entry.worker_id == self.worker_id:
            self._about_me(entry)
            return
        current = self.members.get(entry.worker_id)
        if current is None:
            if not self._admissible(entry, direct):
                self.rejected += 1
                return
        elif entry.incarnation < current.incarnation or (
            entry.incarnation == current.incarnation and entry.status <= current.status
        ):
            return  # not newer (precedence, spelled out: this runs for every gossiped entry)
        elif entry.rank != current.rank and (
            entry.incarnation <= current.incarnation or not self._admissible(entry, direct)
        ):
            self.rejected += 1  # a rank changes only with a new incarnation, to a free rank
            return
        self.members[entry.worker_id] = entry
        self.revision += 1
        self._by_rank.add(entry.rank, entry.worker_id)
        if entry.status == Status.LEFT or entry.rank in self._vacated:
            self._update_vacated(entry.rank)
        if news:
            self._queue_news(entry)
        was_live = current is not None and current.is_live
        if entry.is_live and not was_live:
            self.live_count += 1
            self.joins += 1
            self._dead.pop(entry.worker_id, None)
            self.dead_since.pop(entry.worker_id, None)
            self._add_to_probe_order(entry.worker_id, bulk=not news)
            if self.report_joins:
                self._out.emit(MemberJoined(entry))
            self.changed = True
            self.version += 1
        elif not entry.is_live and was_live:
            self.live_count -= 1
            self.dead_since[entry.worker_id] = now
            if entry.status == Status.DEAD:
                self._dead[entry.worker_id] = None
            self._out.emit(WorkerLost(entry.worker_id, entry.rank, entry.incarnation, entry.status == Status.LEFT))
            self.changed = True
            self.version += 1
        elif current is None:
            # First heard of already gone. No ``dead_since``: this node never saw it live,
            # so no barrier here counts it as expected (it was gone at every opening).
            if entry.status == Status.DEAD:
                self._dead[entry.worker_id] = None  # reconnect pings reach it like any DEAD member
            self.version += 1  # a new member all the same (barriers count it)
        if entry.status == Status.LEFT:
            self._dead.pop(entry.worker_id, None)
        if entry.status == Status.SUSPECT:
            self._seq += 1
            deadline = now + self.settings.heartbeat_timeout
            heapq.heappush(self._suspicions, (deadline, self._seq, entry.worker_id, entry.incarnation))

    def apply_view(self, entries: tuple[MemberEntry, ...], now: float) -> None:
        """Merge a whole ``Members`` view: the same as ``apply(entry, now, news=False)``
        for each entry, in order, except that strangers no longer live come last.

        They come last so that a view naming a dead worker and the live one that took
        over its rank under another id admits the live one (a gone stranger only takes a
        rank nobody holds). Joining means learning every member, so across a cluster this
        runs N^2 times. An entry that is already this view's very object (a view sent
        again, without the codec) changes nothing and is skipped; the common case (an
        ALIVE stranger at a rank nobody holds) is admitted here inline, its counters
        added once at the end (nothing in between reads them); everything else goes
        through :meth:`apply`.
        """
        members, slots, world_size = self.members, self._by_rank.slots, self.world_size
        alive = Status.ALIVE
        # What ``emit`` appends to (the outbox drains only after the call); None: not reported.
        events = self._out.events if self.report_joins else None
        gone: list[MemberEntry] = []
        admitted = 0
        for entry in entries:
            worker_id, rank = entry.worker_id, entry.rank
            current = members.get(worker_id)
            if current is entry:
                continue
            if current is not None or entry.status is not alive or not 0 <= rank < world_size or slots[rank] is not None:
                if current is not None or entry.is_live:
                    self.apply(entry, now, news=False)
                else:
                    gone.append(entry)
                continue
            members[worker_id] = entry
            slots[rank] = worker_id
            admitted += 1
            if events is not None:
                events.append(MemberJoined(entry))
        if admitted:
            self.revision += admitted
            self.live_count += admitted
            self.version += admitted
            self.changed = True
        for entry in gone:
            self.apply(entry, now, news=False)

    def _admissible(self, entry: MemberEntry, direct: bool) -> bool:
        """Whether a worker we never heard of may enter the view.

        Its rank must be in the world and held by no known member; only the worker
        itself (``direct``), live, may take over the rank of a member that is no longer
        live. A stranger that is no longer live is admitted too (at a free rank only): it
        tells a node that joined after the death that the rank is lost, not unseen.
        Refusals depend only on facts that never revert (known ranks), so applying an
        entry twice admits it at most once. This keeps garbage and forged strangers out
        of barriers and quorums.
        """
        if entry.rank >= self.world_size:
            return False
        holders = [self.members[w] for w in self._by_rank.holders(entry.rank) if w != entry.worker_id]
        return not holders or (entry.is_live and direct and not any(e.is_live for e in holders))

    def _about_me(self, entry: MemberEntry) -> None:
        """Refute any claim about this node that would beat its current entry."""
        me = self.me
        if me.status == Status.LEFT or entry.precedence() <= me.precedence():
            return
        new_me = replace(me, incarnation=entry.incarnation + 1, status=Status.ALIVE)
        self.members[self.worker_id] = new_me
        self.revision += 1
        self._queue_news(new_me)
        if entry.status >= Status.DEAD:
            self._out.emit(DeclaredDead(me.incarnation, new_me.incarnation))
            self.declared_dead = True

    def leave(self) -> MemberEntry:
        """Mark this node LEFT (final) and return the entry to announce."""
        left = replace(self.me, status=Status.LEFT)
        self.members[self.worker_id] = left
        self.revision += 1
        self._queue_news(left)
        return left

    # -- gossip ---------------------------------------------------------------

    def _queue_news(self, entry: MemberEntry) -> None:
        self._news.pop(entry.worker_id, None)  # re-insert: newest news goes last in ties
        self._news[entry.worker_id] = [entry, 0]

    def news_for(self, recipient: str) -> tuple[MemberEntry, ...]:
        """Own entry, the recipient's entry if we doubt it, then the least-sent news."""
        items = [self.me]
        doubted = self.members.get(recipient)
        if doubted is not None and doubted.status != Status.ALIVE:
            items.append(doubted)
        if self._news:  # empty in a quiet cluster
            room = self.settings.piggyback_max - len(items)
            for entry in take_news(self._news, room, self.live_count, self.settings):
                if entry.worker_id != self.worker_id and entry.worker_id != recipient:
                    items.append(entry)
        return tuple(items)

    # -- probing --------------------------------------------------------------

    def _add_to_probe_order(self, worker_id: str, *, bulk: bool) -> None:
        if bulk:
            return  # picked up when the order is next rebuilt
        position = self._rng.randrange(len(self._probe_order) + 1)
        self._probe_order.insert(position, worker_id)
        if position < self._probe_index:
            self._probe_index += 1

    def _next_target(self) -> MemberEntry | None:
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                candidate = self.members.get(self._probe_order[self._probe_index])
                self._probe_index += 1
                if candidate is not None and candidate.is_live and candidate.worker_id != self.worker_id:
                    return candidate
            suspect, me = Status.SUSPECT, self.worker_id  # ``is_live``, inlined: this runs N^2 times at start-up
            self._probe_order = [w for w, e in self.members.items() if e.status <= suspect and w != me]
            shuffle(self._rng, self._probe_order)
            self._probe_index = 0
        return None

    def _random_helpers(self, exclude: str, count: int) -> list[MemberEntry]:
        helpers: list[MemberEntry] = []
        order = self._probe_order
        for _ in range(count * 3):
            if len(helpers) == count or not order:
                break
            candidate = self.members.get(order[self._rng.randrange(len(order))])
            if (
                candidate is not None
                and candidate.status == Status.ALIVE
                and candidate.worker_id not in (exclude, self.worker_id)
                and candidate not in helpers
            ):
                helpers.append(candidate)
        return helpers

    def tick(self, now: float, gossip: GossipFactory) -> None:
        """Advance timers: suspicion expiry, indirect probes, the next probe period."""
        self._expire_suspicions(now)
        self._expire_relays(now)
        probe = self._probe
        if (
            probe is not None
            and not probe.acked
            and not probe.indirect_sent
            and now >= probe.started + self.settings.ping_timeout
        ):
            probe.indirect_sent = True
            target = self.members.get(probe.target)
            if target is not None:
                for helper in self._random_helpers(probe.target, self.settings.indirect_probes):
                    message = PingReq(self.worker_id, probe.seq, probe.target, target.endpoint, gossip(helper.worker_id))
                    self._out.send(helper.endpoint, message)
        if now >= self._next_probe_at:
            self._start_period(now, gossip)

    def _start_period(self, now: float, gossip: GossipFactory) -> None:
        period = self.settings.probe_period
        self._next_probe_at = max(self._next_probe_at + period, now + period * 0.5)
        self._periods += 1
        probe = self._probe
        if probe is not None and not probe.acked:
            target = self.members.get(probe.target)
            if target is not None and target.status == Status.ALIVE and target.incarnation == probe.incarnation:
                self.apply(replace(target, status=Status.SUSPECT), now)
        self._probe = None
        target = self._next_target()
        if target is not None:
            self._seq += 1
            self._probe = _Probe(target.worker_id, target.incarnation, self._seq, now)
            self._out.send(target.endpoint, Ping(self.worker_id, self._seq, gossip(target.worker_id)))
        if self._dead and self._periods % self.settings.reconnect_periods == 0:
            dead_ids = list(self._dead)
            dead = self.members[dead_ids[self._rng.randrange(len(dead_ids))]]
            self._seq += 1
            self._out.send(dead.endpoint, Ping(self.worker_id, self._seq, gossip(dead.worker_id)))

    def _expire_suspicions(self, now: float) -> None:
        while self._suspicions and self._suspicions[0][0] <= now:
            _, _, worker_id, incarnation = heapq.heappop(self._suspicions)
            entry = self.members.get(worker_id)
            if entry is not None and entry.status == Status.SUSPECT and entry.incarnation == incarnation:
                self.apply(replace(entry, status=Status.DEAD), now)

    def _expire_relays(self, now: float) -> None:
        while self._relays:
            seq = next(iter(self._relays))
            if self._relays[seq].expires > now:
                break
            del self._relays[seq]

    def next_deadline(self) -> float:
        deadline = self._next_probe_at
        probe = self._probe
        if probe is not None and not probe.acked and not probe.indirect_sent:
            deadline = min(deadline, probe.started + self.settings.ping_timeout)
        if self._suspicions:
            deadline = min(deadline, self._suspicions[0][0])
        return deadline

    # -- handlers -------------------------------------------------------------

    def on_ping(self, message: Ping, gossip: GossipFactory) -> None:
        sender = self.members.get(message.sender)
        if sender is not None:
            ack = Ack(self.worker_id, message.seq, self.worker_id, gossip(message.sender))
            self._out.send(sender.endpoint, ack)

    def on_ack(self, message: Ack, gossip: GossipFactory) -> None:
        probe = self._probe
        if probe is not None and message.seq == probe.seq and message.target == probe.target:
            probe.acked = True
            return
        relay = self._relays.pop(message.seq, None)
        if relay is not None and relay.target == message.target:
            relayed = Ack(self.worker_id, relay.requester_seq, relay.target, gossip(relay.requester))
            self._out.send(relay.requester_endpoint, relayed)

    def on_ping_req(self, message: PingReq, now: float, gossip: GossipFactory) -> None:
        requester = self.members.get(message.sender)
        if requester is None or message.target == self.worker_id:
            return
        self._seq += 1
        self._relays[self._seq] = _Relay(
            requester.worker_id,
            requester.endpoint, message.seq, message.target, now + self.settings.probe_period
        )
        self._out.send(message.target_endpoint, Ping(self.worker_id, self._seq, gossip(message.target)))
