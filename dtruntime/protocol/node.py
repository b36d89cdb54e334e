"""The protocol node: membership, election and barriers composed behind one interface.

Inputs: :meth:`Node.step` for a message that arrived, :meth:`Node.tick` for the passage
of time, :meth:`Node.arrive`, :meth:`Node.part_written`, :meth:`Node.commit_resolved`,
:meth:`Node.set_progress` and :meth:`Node.leave` for local requests. Each returns a
:class:`~dtruntime.protocol.outbox.Ready`: messages for the driver to send, events for
the local API, and the latest time at which ``tick`` must be called next. :meth:`Node.status` returns an
immutable snapshot for observers (:mod:`.status`).

The node never performs IO and never reads a clock; ``now`` is monotonic seconds from
the driver, randomness comes from the ``random.Random`` passed in. Calling ``tick``
early or twice is harmless; so is delivering any message twice (handlers are
idempotent), late, or out of order.

Bootstrap: a node whose ``seeds`` (endpoints) name only itself, or nothing, starts as a
member; any other node sends ``Join`` to its seeds in turn, once a period, until a
``Members`` view answers. The member that completes the expected world (``world_size``
live members) broadcasts the full view once, so nodes that joined early learn the rest.
A ``Join`` whose worker id another live worker holds (the receiver itself, at another
endpoint; or a member at another rank, when the joiner is no newer than it) is answered
with ``JoinRefused`` naming the holder: the joiner reports ``WorkerIdTaken`` and stops
trying, the refuser reports ``DuplicateRefused`` once per joiner. A restart of a worker
has a higher incarnation and is left to the membership rules.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from ..errors import ProtocolError
from .barrier import BarrierBook, Waits
from .codec import validate_barrier_id, validate_barrier_value, validate_codec_name
from .commands import STEP_KEY, CommandBook
from .commit import CommitBook, Saves
from .election import Election
from .events import CommandUpdate, DuplicateRefused, FailureCause, QuorumChanged, WorkerIdTaken
from .membership import Membership
from .messages import (
    Ack,
    Arrive,
    BarrierPending,
    BarrierResult,
    CommandAck,
    CommandEntry,
    CommandState,
    Commands,
    CommitOutcome,
    Gossip,
    Join,
    JoinRefused,
    Leader,
    MemberEntry,
    Members,
    Message,
    Outcome,
    PartDone,
    Ping,
    PingReq,
    Release,
    Status,
    StepResult,
    Vote,
    VoteRequest,
)
from .outbox import Outbox, Ready
from .progress import ProgressBook
from .settings import ProtocolSettings
from .status import NodeStatus, node_status

_Request = TypeVar("_Request", Arrive, PartDone)
_Result = TypeVar("_Result", BarrierResult, StepResult)


REFUSED_MEMORY = 64  # refused joiners remembered, so each is reported once


class Node:
    """One worker's protocol state machine. Not thread-safe: one driver calls it."""

    # Slotted: every node has one, and a simulation touches 10,000 of them in turn.
    __slots__ = ("worker_id", "world_size", "settings", "_out", "membership", "election", "book", "waits",
                 "commits", "saves", "progress", "commands", "_seeds", "joined", "_join_attempts",
                 "_next_join_at", "_world_announced", "_refused", "_has_quorum", "_leadership", "_left",
                 "_joins_seen", "dropped")

    def __init__(
        self,
        member: MemberEntry,
        world_size: int,
        seeds: Sequence[str],
        settings: ProtocolSettings,
        rng: random.Random,
        now: float,
        *,
        report_joins: bool = True,
    ) -> None:
        """``report_joins=False`` leaves ``MemberJoined`` out of every :class:`Ready`: a
        driver that never reads them saves building N of them per node at start-up. The
        node behaves the same either way."""
        if world_size < 1:
            raise ProtocolError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= member.rank < world_size:
            raise ProtocolError(f"rank {member.rank} is outside the world of {world_size}")
        if member.status != Status.ALIVE:
            raise ProtocolError("a node starts ALIVE")
        self.worker_id = member.worker_id
        self.world_size = world_size
        self.settings = settings
        self._out = Outbox()
        self.membership = Membership(member, world_size, settings, rng, self._out, now, report_joins=report_joins)
        self.election = Election(member.worker_id, settings, rng, self._out, now)
        self.book = BarrierBook(world_size, settings)
        self.waits = Waits(member.worker_id, settings, self._out)
        self.commits = CommitBook(member.worker_id, world_size, settings, self._out)
        self.saves = Saves(member.worker_id, settings, self._out)
        self.progress = ProgressBook(member.worker_id, settings)
        self.commands = CommandBook(member.worker_id, settings)
        self._seeds = [s for s in seeds if s != member.endpoint]
        self.joined = not self._seeds
        self._join_attempts = 0
        self._next_join_at = now
        self._world_announced = False
        self._refused: OrderedDict[tuple[str, str, int], None] = OrderedDict()  # joiners refused, reported once
        self._has_quorum = 1 >= self.membership.quorum
        # (leader_id, is_leader, leader_term) as of the last _on_leader_change: a handler
        # (a Vote, a Leader claim, gossip) changes the election before _after runs.
        self._leadership: tuple[str | None, bool, int] = (None, False, 0)
        self._left = False
        self._joins_seen = 0  # membership.joins when this node last re-spread its progress counters
        self.dropped: Counter[str] = Counter()  # messages ignored, by reason
        self._after(now)

    # -- public inputs ------------------------------------------------------------

    @property
    def leader_id(self) -> str | None:
        return self.election.leader_id

    @property
    def is_leader(self) -> bool:
        return self.election.is_leader

    @property
    def has_left(self) -> bool:
        return self._left

    def status(self, now: float) -> NodeStatus:
        """An immutable snapshot of this node (see :mod:`.status`); changes nothing."""
        return node_status(self, now)

    def members(self) -> list[MemberEntry]:
        """Live members (ALIVE or SUSPECT) in this node's view, self included."""
        return self.membership.live_members()

    def tick(self, now: float) -> Ready:
        if self._left:
            return self._out.drain(float("inf"))
        if not self.joined and now >= self._next_join_at:
            self._send_join(now)
        self.membership.tick(now, self._gossip)
        self.book.tick(now, self.membership)
        self.waits.tick(now, self._no_answer)
        if self.waits.resend_due(now):
            self._deliver_arrivals(self.waits.arrivals(self.membership.me.incarnation, now), now)
        if self.saves.resend_due(now):
            self._deliver_reports(self.saves.reports(self.membership.me.incarnation))
        if self.commands.resend_due(now):
            self._deliver_acks(self.commands.all_acks())
        return self._after(now)

    def arrive(
        self, barrier_id: str, now: float, *, timeout: float | None = None, elastic: bool = False, value: str = ""
    ) -> Ready:
        """Start waiting at ``barrier_id``; the outcome comes as a Barrier* event.

        ``value`` (at most 1024 printable characters) is compared with the other
        members' values; the release names those that differ.
        """
        try:
            validate_barrier_id(barrier_id)
            validate_barrier_value(value)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        if self._left:
            raise ProtocolError("this node has left the cluster")
        arrival = self.waits.start(barrier_id, now, timeout, elastic, self.membership.me.incarnation, value)
        self._deliver_arrivals([arrival], now)
        return self._after(now)

    def part_written(
        self, step: int, rank: int, size: int, checksum: int, codec: str, now: float, *, ok: bool = True
    ) -> Ready:
        """Report this rank's part of checkpoint ``step`` (``ok=False``: writing it failed).

        The part must be durable before the call. The step's outcome comes as a
        ``CheckpointCommitted`` or ``CheckpointAbandoned`` event.
        """
        if self._left:
            raise ProtocolError("this node has left the cluster")
        if rank != self.membership.me.rank:
            raise ProtocolError(f"this worker has rank {self.membership.me.rank}, not {rank}")
        values = (step, size, checksum)
        if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63 for v in values):
            raise ProtocolError(f"step, size and checksum must be integers in [0, 2**63), got {values}")
        try:
            validate_codec_name(codec)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        report = PartDone(self.worker_id, self.membership.me.incarnation, step, rank, size, checksum, codec, ok)
        self.saves.start(report, now)
        self._deliver_reports([report])
        return self._after(now)

    def commit_resolved(
        self, step: int, outcome: CommitOutcome, now: float, missing_ranks: tuple[int, ...] = ()
    ) -> Ready:
        """The local API decided checkpoint ``step`` from storage (after a ``CommitDue``,
        or a scan on becoming leader); the first decision for a step stands."""
        if not self._left:
            self.commits.resolve(step, outcome, missing_ranks)
        return self._after(now)

    def set_progress(self, key: str, value: int, now: float) -> Ready:
        """Publish this worker's counter ``key`` (it only grows); gossip spreads it.

        :data:`~.commands.STEP_KEY` is the training step: commands waiting for this
        node's first step are acked with it.
        """
        self.progress.set_own(key, value)
        if key == STEP_KEY:
            self._ack_commands(now)
        return self._after(now)

    def waiting_for(self, barrier_id: str) -> tuple[str, ...] | None:
        """Who this node's current wait at ``barrier_id`` still waits for, as the leader
        last said (exact on the leader itself); None when unknown or not waiting."""
        if self.election.is_leader:
            return self.book.missing((barrier_id, self.waits.generation(barrier_id)))
        return self.waits.missing.get(barrier_id)

    def submit_command(self, entry: CommandEntry, now: float) -> Ready:
        """Spread run-control command ``entry`` to every member (see ``protocol.commands``)."""
        if self._left:
            raise ProtocolError("this node has left the cluster")
        if entry.submitted_by != self.worker_id or entry.target:
            raise ProtocolError("a command is submitted by this worker, with no target")
        if entry.command_id in self.commands.entries:
            raise ProtocolError(f"command {entry.command_id!r} was already submitted")
        self.commands.learn(entry)
        self._broadcast(Commands(self.worker_id, (entry,)))
        self._ack_commands(now)
        return self._after(now)

    def cancel_command(self, command_id: str, now: float) -> Ready:
        """Mark a known command cancelled, for every member (see ``protocol.commands``)."""
        entry = self.commands.entries.get(command_id)
        if entry is None:
            raise ProtocolError(f"unknown command {command_id!r}")
        cancelled = replace(entry, cancelled=True)
        if self.commands.learn(cancelled):
            self._broadcast(Commands(self.worker_id, (cancelled,)))
        return self._after(now)

    def set_command_state(self, command_id: str, state: int, now: float) -> Ready:
        """Publish this worker's state of a known command (it only grows)."""
        if self.commands.entries.get(command_id) is None:
            raise ProtocolError(f"unknown command {command_id!r}")
        record = CommandState(self.worker_id, command_id, self.membership.me.rank, state)
        if self.commands.learn_state(record):
            submitter = self.membership.get(self.commands.entries[command_id].submitted_by)
            if submitter is not None and submitter.is_live and submitter.worker_id != self.worker_id:
                self._out.send(submitter.endpoint, Commands(self.worker_id, (), (record,)))
        return self._after(now)

    def progress_of(self, key: str) -> dict[str, int]:
        """Every worker's counter ``key`` as far as this node has heard (its own included)."""
        return self.progress.of_key(key)

    def leave(self, now: float) -> Ready:
        """Announce a clean exit (LEFT) to every live peer, fail local waits; the node stops."""
        if not self._left:
            self.waits.fail_all(FailureCause.LEFT, "this worker left the cluster")
            self.saves.fail_all("this worker left the cluster")
            left = self.membership.leave()
            gossip = Gossip(self.election.leader_term, self.election.leader_id or "", (left,))
            peers = [e for e in self.membership.members.values() if e.is_live and e.worker_id != self.worker_id]
            released = self.waits.latest_release()
            if released is not None:  # before any LEFT news, so a waiter keeps its quorum
                for entry in peers:
                    self._out.send(entry.endpoint, Release(self.worker_id, released))
            for entry in peers:
                self._out.send(entry.endpoint, Ping(self.worker_id, 0, gossip))
            self._left = True
        return self._out.drain(float("inf"))

    def step(self, message: Message, now: float) -> Ready:
        """Handle one message that arrived from the network."""
        if self._left:
            return self._out.drain(float("inf"))
        if message.sender == self.worker_id:  # from this node, or from another process using its id
            if isinstance(message, Join) and message.member.endpoint != self.membership.me.endpoint:
                self._refuse_join(message.member, self.membership.me)
            elif isinstance(message, JoinRefused):
                self._on_join_refused(message, now)
            else:
                self.dropped["from_self"] += 1
            return self._after(now)
        handler = _HANDLERS[type(message)]
        handler(self, message, now)
        if message.sender in self.membership.members:  # bounded: members only, never strangers
            self.membership.heard[message.sender] = now
        return self._after(now)

    # -- handlers -----------------------------------------------------------------

    def _on_gossip(self, message: Ping | Ack | PingReq, now: float) -> None:
        gossip, sender, membership = message.gossip, message.sender, self.membership
        # The sender's own entries go last, so whether it may take over a rank does not
        # depend on the order of the entries (duplicates stay no-ops).
        # An entry that is already this view's very object (no codec on the way: the
        # sender's own entry, usually) changes nothing, so it skips the call.
        own = []
        members = membership.members
        for entry in gossip.members:
            if members.get(entry.worker_id) is entry:
                continue
            if entry.worker_id != sender:
                membership.apply(entry, now)
            else:
                own.append(entry)
        for entry in own:
            membership.apply(entry, now, direct=True)
        for progress in gossip.progress:
            # Own counters are authoritative; strangers' counters are not kept (bounded state).
            if progress.worker_id != self.worker_id and membership.get(progress.worker_id) is not None:
                self.progress.apply(progress)
        if gossip.commands or gossip.command_states:
            self._learn_commands(gossip.commands, gossip.command_states, now)
        first_hand = gossip.leader_id == message.sender
        self.election.on_leader_claim(gossip.leader_term, gossip.leader_id, self.membership, first_hand=first_hand)
        if gossip.leader_id != sender and sender == self.election.leader_id:  # it acts only then
            self.election.on_leader_silent(sender, gossip.leader_term)
        if isinstance(message, Ping):
            self.membership.on_ping(message, self._gossip)
        elif isinstance(message, Ack):
            self.membership.on_ack(message, self._gossip)
        else:
            self.membership.on_ping_req(message, now, self._gossip)

    def _on_join(self, message: Join, now: float) -> None:
        if message.member.worker_id != message.sender:
            self.dropped["join_mismatch"] += 1
            return
        holder, joiner = self.membership.get(message.sender), message.member
        if (holder is not None and holder.is_live and holder.rank != joiner.rank
                and holder.endpoint != joiner.endpoint and joiner.incarnation <= holder.incarnation):
            # A live worker holds the id at another rank and the joiner is no newer: two
            # processes share it. A newer joiner may be that worker restarted (at any
            # rank, before its old process was found dead): membership decides.
            self._refuse_join(joiner, holder)
            return
        self.membership.apply(message.member, now, news=self._world_announced, direct=True)
        view = self._view()
        self._out.send(message.member.endpoint, view)
        if not self._world_announced and self.membership.live_count >= self.world_size:
            self._world_announced = True
            for entry in self.membership.members.values():
                if entry.is_live and entry.worker_id not in (self.worker_id, message.sender):
                    self._out.send(entry.endpoint, view)

    def _refuse_join(self, joiner: MemberEntry, holder: MemberEntry) -> None:
        """Answer a Join for a taken id with the holder's whereabouts; report each joiner once here."""
        self.dropped["join_id_taken"] += 1
        self._out.send(joiner.endpoint, JoinRefused(self.worker_id, joiner.worker_id, holder.endpoint, holder.rank))
        key = (joiner.worker_id, joiner.endpoint, joiner.incarnation)
        if key not in self._refused:
            self._refused[key] = None
            if len(self._refused) > REFUSED_MEMORY:
                self._refused.popitem(last=False)
            self._out.emit(DuplicateRefused(joiner.worker_id, joiner.endpoint, joiner.rank, holder.endpoint))

    def _on_join_refused(self, message: JoinRefused, now: float) -> None:
        """Our id is taken: stop joining (only before the first view; afterwards it is stale)."""
        if self.joined or message.worker_id != self.worker_id or self._next_join_at == float("inf"):
            self.dropped["join_refused_ignored"] += 1
            return
        self._next_join_at = float("inf")
        self._out.emit(WorkerIdTaken(self.worker_id, message.holder_endpoint, message.holder_rank))

    def _on_members(self, message: Members, now: float) -> None:
        first_view = not self.joined
        self.membership.apply_view(message.members, now)
        self.joined = True
        self._world_announced = self._world_announced or self.membership.live_count >= self.world_size
        if first_view and message.leader_term > 0:
            # Joining an established cluster, possibly after a restart: abstain from votes.
            self.election.abstain_until = now + self.settings.election_timeout
        first_hand = message.leader_id == message.sender
        self.election.on_leader_claim(message.leader_term, message.leader_id, self.membership, first_hand=first_hand)

    def _on_vote_request(self, message: VoteRequest, now: float) -> None:
        self.election.on_vote_request(message, now, self.membership)

    def _on_vote(self, message: Vote, now: float) -> None:
        self.election.on_vote(message, self.membership)

    def _on_leader(self, message: Leader, now: float) -> None:
        self.election.on_leader_claim(message.term, message.sender, self.membership, first_hand=True)

    def _on_arrive(self, message: Arrive, now: float) -> None:
        if not self.election.is_leader:
            self.dropped["arrive_not_leader"] += 1
            return
        result = self.book.arrive(message, now, self.membership)
        if result is not None:
            self._send_result(result, message.sender)
        elif message.waited_ms:  # a re-sent arrival: tell the waiter whom it waits for
            missing = self.book.missing((message.barrier_id, message.generation))
            sender = self.membership.get(message.sender)
            if missing is not None and sender is not None:
                self._out.send(sender.endpoint, BarrierPending(
                    self.worker_id, message.barrier_id, message.generation, missing[:64]))

    def _on_release(self, message: Release, now: float) -> None:
        """A result from our leader ends a wait; one sent to us as leader is a report.

        A RELEASED result is also taken from any other member (a leaving member relays
        its newest one): it is a decision some leader made for that exact generation,
        and a release never contradicts a live member's arrival. Failures are taken
        from the leader only, so a stale leader's verdict cannot fail a live barrier.
        The result's ``verdicts`` are merged into the view first (as gossip would merge
        them), so the view agrees with the outcome when the wait ends.
        """
        result = message.result
        if self.election.is_leader:
            self.book.learn(result)  # a follower reporting an earlier leader's result
        elif message.sender != self.election.leader_id and result.outcome != Outcome.RELEASED:
            self.dropped["release_not_from_leader"] += 1
            return
        for entry in result.verdicts:
            self.membership.apply(entry, now)
        self.waits.on_result(result)

    def _on_barrier_pending(self, message: BarrierPending, now: float) -> None:
        if message.sender != self.election.leader_id:
            self.dropped["pending_not_from_leader"] += 1
            return
        self.waits.on_pending(message.barrier_id, message.generation, message.missing)

    def _on_commands(self, message: Commands, now: float) -> None:
        if self.membership.get(message.sender) is None:  # only members steer the job
            self.dropped["commands_from_stranger"] += 1
            return
        self._learn_commands(message.commands, message.states, now)

    def _on_command_ack(self, message: CommandAck, now: float) -> None:
        if not self.election.is_leader:
            self.dropped["command_ack_not_leader"] += 1
            return
        self.commands.on_ack(message)
        self._decide_commands()

    def _on_part_done(self, message: PartDone, now: float) -> None:
        if not self.election.is_leader:
            self.dropped["part_done_not_leader"] += 1
            return
        result = self.commits.report(message, self.membership)
        if result is not None:
            self._send_step_result(result, message.sender)

    def _on_step_result(self, message: StepResult, now: float) -> None:
        """A step's result ends this rank's wait; one sent to us as leader is also a report.

        Results state what storage holds, so they are taken from any sender (a rank
        reporting an earlier leader's result, or a leader this node does not know yet).
        """
        if self.election.is_leader:
            self.commits.learn(message)
        self.saves.on_result(message)

    # -- internals ------------------------------------------------------------------

    def _gossip(self, recipient: str) -> Gossip:
        return Gossip(
            self.election.leader_term,
            self.election.leader_id or "",
            self.membership.news_for(recipient),
            self.progress.news(self.membership.live_count),
            self.commands.news(self.membership.live_count),
            self.commands.state_news(self.membership.live_count),
        )

    def _view(self) -> Members:
        return Members(
            self.worker_id,
            self.election.leader_term,
            self.election.leader_id or "",
            tuple(self.membership.members.values()),
        )

    def _send_join(self, now: float) -> None:
        seed = self._seeds[self._join_attempts % len(self._seeds)]
        self._join_attempts += 1
        self._next_join_at = now + self.settings.probe_period
        self._out.send(seed, Join(self.worker_id, self.membership.me))

    def _deliver_arrivals(self, arrivals: list[Arrive], now: float) -> None:
        self._to_leader(arrivals, lambda arrival: self.book.arrive(arrival, now, self.membership),
                        self.waits.on_result)

    def _deliver_reports(self, reports: list[PartDone]) -> None:
        self._to_leader(reports, lambda report: self.commits.report(report, self.membership),
                        self.saves.on_result)

    def _to_leader(self, requests: Sequence[_Request], decide: Callable[[_Request], _Result | None],
                   finish: Callable[[_Result], None]) -> None:
        """Send this node's ``requests`` (arrivals, part reports) to the leader.

        The leader hands its own to its book (``decide``), and a result already decided
        comes back at once (``finish``); with no leader known nothing is sent: waits and
        saves re-send when one is.
        """
        leader_id = self.election.leader_id
        if leader_id is None:
            return
        if self.election.is_leader:
            for request in requests:
                result = decide(request)
                if result is not None:
                    finish(result)
            return
        leader = self.membership.get(leader_id)
        if leader is not None:
            for request in requests:
                self._out.send(leader.endpoint, request)

    def _learn_commands(self, entries: Sequence[CommandEntry], states: Sequence[CommandState], now: float) -> None:
        for entry in entries:
            self.commands.learn(entry)
        for state in states:
            if self.membership.get(state.worker_id) is not None:
                self.commands.learn_state(state)
        self._ack_commands(now)
        if self.election.is_leader:
            self._decide_commands()

    def _ack_commands(self, now: float) -> None:
        acks = self.commands.acks_due(self.progress.value(self.worker_id, STEP_KEY), now)
        if acks:
            self._deliver_acks(acks)

    def _deliver_acks(self, acks: list[CommandAck]) -> None:
        leader_id = self.election.leader_id
        if leader_id is None:
            return  # re-sent when a leader is known
        if self.election.is_leader:
            for ack in acks:
                self.commands.on_ack(ack)
            self._decide_commands()
            return
        leader = self.membership.get(leader_id)
        if leader is not None:
            for ack in acks:
                self._out.send(leader.endpoint, ack)

    def _decide_commands(self) -> None:
        decided = self.commands.decide(self.membership)
        if decided:
            self._broadcast(Commands(self.worker_id, tuple(decided)))

    def _broadcast(self, message: Message) -> None:
        for entry in self.membership.members.values():
            if entry.is_live and entry.worker_id != self.worker_id:
                self._out.send(entry.endpoint, message)

    def _emit_command_updates(self) -> None:
        commands = self.commands
        for command_id in commands.changed:
            entry = commands.entries.get(command_id)
            if entry is not None:
                self._out.emit(CommandUpdate(entry, commands.known_states(command_id), commands.acked.get(command_id)))
        commands.changed.clear()

    def _send_step_result(self, result: StepResult, worker_id: str) -> None:
        self._answer(worker_id, result, self.saves.on_result,
                     lambda: StepResult(self.worker_id, result.step, result.outcome, result.missing_ranks))

    def _send_result(self, result: BarrierResult, worker_id: str) -> None:
        self._answer(worker_id, result, self.waits.on_result, lambda: Release(self.worker_id, result))

    def _answer(self, worker_id: str, result: _Result, finish: Callable[[_Result], None],
                message: Callable[[], Message]) -> None:
        """Give ``worker_id`` a decided result: this node's own wait directly, a peer by ``message()``."""
        if worker_id == self.worker_id:
            finish(result)
            return
        entry = self.membership.get(worker_id)
        if entry is not None:
            self._out.send(entry.endpoint, message())

    def _after(self, now: float) -> Ready:
        """Settle the consequences of whatever just happened, then hand out the Ready.

        Runs after every input, so it is written for speed: components are read into
        locals and the timers that cannot be set (no open barrier, no wait, a known
        leader) are skipped rather than asked for infinity.
        """
        election, membership = self.election, self.membership
        view_changed = membership.changed
        if view_changed:
            membership.changed = False
            if membership.joins != self._joins_seen:  # a joiner must hear counters that stopped changing
                self._joins_seen = membership.joins
                self.progress.spread_own_again()
        if view_changed or election.leader_id is None or election.is_leader:
            election.evaluate(now, membership)
        if (membership.live_count >= membership.quorum) != self._has_quorum:
            self._check_quorum()
        if membership.declared_dead:
            membership.declared_dead = False
            self.waits.fail_all(FailureCause.DECLARED_DEAD, "this worker was declared dead by the cluster")
        if view_changed and election.is_leader:
            self.book.on_view_change(membership)
            self.commits.on_view_change(membership)
            if self.commands.undecided():
                self._decide_commands()
        settled = self._leadership
        if (election.leader_id != settled[0] or election.is_leader != settled[1]
                or election.leader_term != settled[2]):
            self._leadership = (election.leader_id, election.is_leader, election.leader_term)
            self._on_leader_change(now, settled[1])
        book, commits = self.book, self.commits
        if book.decisions:
            for decision in book.decisions:
                for worker_id in decision.arrived:
                    self._send_result(decision.result, worker_id)
            book.decisions.clear()
        if commits.decisions:
            for commit in commits.decisions:
                for worker_id in commit.reporters:
                    self._send_step_result(commit.result, worker_id)
            commits.decisions.clear()
        deadline = membership.next_deadline()
        if election.leader_id is None:
            deadline = min(deadline, election.next_deadline(now))
        if not self.joined:
            deadline = min(deadline, self._next_join_at)
        if book.has_deadlines:
            deadline = min(deadline, book.next_deadline())
        if self.waits:
            deadline = min(deadline, self.waits.next_deadline())
        saves_deadline = self.saves.next_resend  # Saves.next_deadline(), without the call
        if saves_deadline < deadline:
            deadline = saves_deadline
        commands = self.commands
        if commands.changed:
            self._emit_command_updates()
        if commands.acked and commands.next_resend < deadline:
            deadline = commands.next_resend
        return self._out.drain(deadline)

    def _on_leader_change(self, now: float, was_leader: bool) -> None:
        """Hand this node's state to a new leadership: a new leader, a new role, or a new term.

        Runs once per change of ``(leader_id, is_leader, leader_term)``, whichever input
        made it (an election won on a ``Vote``, a ``Leader`` claim or gossip followed, a
        timeout in ``tick``). A leader that steps down forgets its open books; a new
        leader learns this node's recent results; a follower sends them, and every
        pending arrival, report and ack, to the leader at once. A leader that restarted
        under the same id and won a new term is a new leadership too: it knows nothing.
        """
        if was_leader and not self.election.is_leader:
            self.book.clear_open()
            self.commits.clear_open()
            self.commands.clear_leader_state()
        leader_id = self.election.leader_id
        if leader_id is None:
            return
        if self.election.is_leader:
            for result in self.waits.recent.values():
                self.book.learn(result)
            for step_result in self.saves.recent.values():
                self.commits.learn(step_result)
        else:
            leader = self.membership.get(leader_id)
            if leader is not None:
                for result in self.waits.recent.values():
                    self._out.send(leader.endpoint, Release(self.worker_id, result))
                for step_result in self.saves.recent.values():
                    self._send_step_result(step_result, leader_id)
                if self.commands.entries:  # a target an earlier leader decided stands
                    self._out.send(leader.endpoint, Commands(self.worker_id, tuple(self.commands.entries.values())))
        self._deliver_arrivals(self.waits.arrivals(self.membership.me.incarnation, now), now)
        self._deliver_reports(self.saves.reports(self.membership.me.incarnation))
        self._deliver_acks(self.commands.all_acks())

    def _check_quorum(self) -> None:
        live, needed = self.membership.live_count, self.membership.quorum
        has_quorum = live >= needed
        if has_quorum != self._has_quorum:
            self._has_quorum = has_quorum
            self._out.emit(QuorumChanged(has_quorum, live, needed))
            if not has_quorum and self.joined:
                self.waits.fail_all(FailureCause.NO_QUORUM, f"no quorum: {self.membership.describe_quorum(needed)}")

    def _no_answer(self) -> str:
        """Why a barrier wait got no answer by its deadline, as far as this node can tell."""
        leader_id = self.election.leader_id
        if leader_id is not None:
            return f"no answer from the leader {leader_id}"
        if self.membership.live_count < self.membership.quorum:
            return f"no leader, no quorum: {self.membership.describe_quorum(self.membership.quorum)}"
        return "no leader was elected in time"


_HANDLERS = {
    Ping: Node._on_gossip,
    Ack: Node._on_gossip,
    PingReq: Node._on_gossip,
    Join: Node._on_join,
    Members: Node._on_members,
    VoteRequest: Node._on_vote_request,
    Vote: Node._on_vote,
    Leader: Node._on_leader,
    Arrive: Node._on_arrive,
    Release: Node._on_release,
    PartDone: Node._on_part_done,
    StepResult: Node._on_step_result,
    JoinRefused: Node._on_join_refused,
    BarrierPending: Node._on_barrier_pending,
    Commands: Node._on_commands,
    CommandAck: Node._on_command_ack,
}
