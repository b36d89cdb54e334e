"""An immutable status snapshot of one node, the way etcd raft exposes ``Status``.

:func:`node_status` reads a :class:`~dtruntime.protocol.node.Node` and returns a
:class:`NodeStatus` made only of frozen dataclasses, tuples, strings and numbers, so
another thread may keep and read it while the node moves on. It is built by whoever
drives the node (the runtime's driver publishes it by swapping a reference); it never
changes the node.

What a follower knows is less than what the leader knows, and the snapshot says so:

* ``barriers``: the leader lists every open barrier with whom it still waits for
  (``source="leader"``); a follower lists only its own waits (``source="self"``), whose
  ``waiting_for`` it cannot know (empty).
* ``checkpoints``: a rank knows the steps it reported (pending until the leader's
  result) and the results it received; the leader also knows the steps other ranks
  reported and every step it decided (bounded histories).
* ``heard_age_s``: seconds since this node last received a message directly from that
  member (None: never, or the member is this node). With SWIM a peer messages a given
  node about once per probe period, so it grows with the world size; the member's
  ``status`` is the gossiped verdict.

Everything is bounded by the world size and the protocol's bounded histories.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from .barrier import BarrierBook, Waits
from .commit import CommitBook, Saves
from .election import Election
from .membership import Membership
from .messages import CommitOutcome, Status
from .progress import ProgressBook


class Observed(Protocol):
    """What a snapshot reads of a node (``Node`` is one), so this module needs no import
    of ``node`` (which imports this one)."""

    worker_id: str
    world_size: int
    joined: bool
    membership: Membership
    election: Election
    book: BarrierBook
    waits: Waits
    commits: CommitBook
    saves: Saves
    progress: ProgressBook
    dropped: Mapping[str, int]

    @property
    def has_left(self) -> bool: ...

STATUS_NAMES = {Status.ALIVE: "alive", Status.SUSPECT: "suspect", Status.DEAD: "lost", Status.LEFT: "left"}


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as this node sees it; ``status`` is alive, suspect, lost or left."""

    worker_id: str
    rank: int
    local_rank: int
    endpoint: str
    incarnation: int
    status: str
    heard_age_s: float | None
    gone_for_s: float | None  # since this node saw it stop being live (None while live)


@dataclass(frozen=True, slots=True)
class BarrierView:
    """An open barrier: the leader's book entry, or this node's own wait."""

    barrier_id: str
    generation: int
    source: str  # "leader" or "self"
    arrived: tuple[str, ...]
    waiting_for: tuple[str, ...]
    age_s: float
    elastic: bool


@dataclass(frozen=True, slots=True)
class CheckpointView:
    """Checkpoint steps known here: pending (reported, no result yet), committed, abandoned."""

    pending: tuple[int, ...]
    committed: tuple[int, ...]
    abandoned: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """Everything an observer may want about one node, at node time ``taken_at``."""

    taken_at: float
    worker_id: str
    rank: int
    world_size: int
    incarnation: int
    role: str  # "leader", "candidate" or "follower"
    term: int
    leader_id: str | None
    joined: bool
    has_quorum: bool
    quorum: int
    left: bool
    members: tuple[MemberView, ...]  # by rank, then worker id
    barriers: tuple[BarrierView, ...]
    checkpoints: CheckpointView
    progress: tuple[tuple[str, str, int], ...]  # (worker_id, key, value), by worker then key
    campaigns: int  # elections this node started
    dropped: tuple[tuple[str, int], ...]  # messages the node ignored, by reason
    rejected: int  # gossiped entries about strangers that could not be members

    def member(self, worker_id: str) -> MemberView | None:
        return next((m for m in self.members if m.worker_id == worker_id), None)

    def count_by_status(self) -> dict[str, int]:
        """Members per status name (every name present, 0 when none)."""
        counts = dict.fromkeys(STATUS_NAMES.values(), 0)
        for member in self.members:
            counts[member.status] += 1
        return counts


def node_status(node: Observed, now: float) -> NodeStatus:
    """A snapshot of ``node`` at ``now`` (monotonic seconds, the node's clock)."""
    membership, election = node.membership, node.election
    heard = membership.heard
    members = []
    for entry in membership.members.values():
        last = heard.get(entry.worker_id)
        gone = membership.dead_since.get(entry.worker_id)
        members.append(MemberView(
            entry.worker_id, entry.rank, entry.local_rank, entry.endpoint, entry.incarnation,
            STATUS_NAMES[entry.status], None if last is None else max(0.0, now - last),
            None if gone is None or entry.is_live else max(0.0, now - gone),
        ))
    members.sort(key=lambda m: (m.rank, m.worker_id))
    role = "leader" if election.is_leader else ("candidate" if election.campaigning else "follower")
    return NodeStatus(
        taken_at=now,
        worker_id=node.worker_id,
        rank=membership.me.rank,
        world_size=node.world_size,
        incarnation=membership.me.incarnation,
        role=role,
        term=election.leader_term,
        leader_id=election.leader_id,
        joined=node.joined,
        has_quorum=membership.live_count >= membership.quorum,
        quorum=membership.quorum,
        left=node.has_left,
        members=tuple(members),
        barriers=_barriers(node, now),
        checkpoints=_checkpoints(node),
        progress=node.progress.entries(),
        campaigns=election.campaigns,
        dropped=tuple(sorted(node.dropped.items())),
        rejected=membership.rejected,
    )


def _barriers(node: Observed, now: float) -> tuple[BarrierView, ...]:
    views = []
    if node.election.is_leader:
        for (barrier_id, generation), opened_at, expected, arrived, elastic in node.book.open_barriers():
            views.append(BarrierView(
                barrier_id, generation, "leader", tuple(arrived),
                tuple(w for w in expected if w not in arrived), max(0.0, now - opened_at), elastic,
            ))
    led = {(v.barrier_id, v.generation) for v in views}
    for barrier_id, generation, started, elastic in node.waits.open_waits():
        if (barrier_id, generation) not in led:
            views.append(BarrierView(barrier_id, generation, "self", (node.worker_id,), (), max(0.0, now - started),
                                     elastic))
    return tuple(views)


def _checkpoints(node: Observed) -> CheckpointView:
    pending = set(node.saves.pending_steps())
    outcomes: dict[int, CommitOutcome] = {r.step: r.outcome for r in node.saves.recent.values()}
    if node.election.is_leader:
        pending.update(node.commits.open_steps())
        outcomes.update((r.step, r.outcome) for r in node.commits.decided_results())
    pending.difference_update(outcomes)
    committed = tuple(sorted(s for s, o in outcomes.items() if o == CommitOutcome.COMMITTED))
    abandoned = tuple(sorted(s for s, o in outcomes.items() if o != CommitOutcome.COMMITTED))
    return CheckpointView(tuple(sorted(pending)), committed, abandoned)
