"""Events a :class:`~dtruntime.protocol.node.Node` reports to its local API.

Events are facts about this node's view, emitted once when the view changes; the
runtime turns them into resolved futures and exceptions, the simulator into a trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .messages import CommandEntry, CommandState, CommitOutcome, MemberEntry, Outcome, PartDone, wire


class FailureCause(IntEnum):
    """Why a wait at a barrier ended without passing: one cause for every failure.

    LOST and TIMEOUT are the leader's verdicts (the numbers of :class:`Outcome`); the
    others are decided by this node alone.
    """

    LOST = Outcome.LOST  # expected members were declared dead (``workers`` names them)
    TIMEOUT = Outcome.TIMEOUT  # the timeout passed: ``workers`` had not arrived; none named: no leader answered
    NO_QUORUM = 3  # this node no longer sees a majority of the world
    LEFT = 4  # this worker left the cluster
    DECLARED_DEAD = 5  # the cluster declared this worker dead (it rejoins at a new incarnation)
    EXCLUDED = 6  # an elastic barrier was released without this worker


@dataclass(frozen=True, slots=True)
class LeaderChanged:
    """This node now believes ``leader_id`` leads ``term`` (``None``: no leader known)."""

    leader_id: str | None
    term: int


@wire  # a frozen, slotted dataclass built fast: N of them per node at start-up
class MemberJoined:
    """A worker became ALIVE in this view: new, restarted or rejoined after DEAD."""

    member: MemberEntry


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """A worker was declared DEAD (or LEFT) in this view."""

    worker_id: str
    rank: int
    incarnation: int
    left: bool = False


@dataclass(frozen=True, slots=True)
class DeclaredDead:
    """The cluster declared *this* worker dead; it rejoined at ``new_incarnation``.

    Barriers it was waiting at have been decided without it and fail locally.
    """

    old_incarnation: int
    new_incarnation: int


@dataclass(frozen=True, slots=True)
class QuorumChanged:
    """Whether this node sees a majority of the expected world alive."""

    has_quorum: bool
    live: int
    needed: int


@dataclass(frozen=True, slots=True)
class BarrierReleased:
    """This node passed barrier ``barrier_id`` (generation ``generation``).

    ``excluded`` lists members an elastic barrier released without, as dead. The
    agreement fields are those of :class:`~dtruntime.protocol.messages.BarrierResult`:
    ``differing`` is empty when every arrived member sent the same value.
    """

    barrier_id: str
    generation: int
    excluded: tuple[str, ...] = ()
    reference: str = ""
    reference_value: str = ""
    differing: tuple[str, ...] = ()
    differing_value: str = ""


@dataclass(frozen=True, slots=True)
class BarrierFailed:
    """This node's wait at a barrier ended without passing, for ``reason`` (see
    :class:`FailureCause`); ``detail`` says more in words for the local causes."""

    barrier_id: str
    generation: int
    reason: FailureCause
    workers: tuple[str, ...]
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CommitDue:
    """Leader only: checkpoint ``step`` must be decided against storage now.

    Emitted once per step and leadership when every rank reported its part
    (``missing_ranks`` empty) or when the ranks in ``missing_ranks`` can no longer
    report (declared dead, left, or their write failed). ``reports`` are the reports
    received, by rank. The local API settles it from storage, never in the driver
    thread: a manifest already there means COMMITTED; all parts there means write the
    manifest, then COMMITTED (or FAILED if that write fails); otherwise ABANDONED. It
    answers with :meth:`Node.commit_resolved`.
    """

    step: int
    reports: tuple[PartDone, ...]
    missing_ranks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CheckpointCommitted:
    """Checkpoint ``step``, to which this node reported a part, is committed."""

    step: int


@dataclass(frozen=True, slots=True)
class CheckpointAbandoned:
    """Checkpoint ``step``, to which this node reported a part, will never be committed.

    ``outcome`` is ABANDONED (``missing_ranks`` had no part) or FAILED (the leader could
    not write the manifest); ``detail`` explains local causes (this worker left).
    """

    step: int
    outcome: CommitOutcome
    missing_ranks: tuple[int, ...]
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WorkerIdTaken:
    """Joining failed: this node's worker id is held by the live worker at ``holder_endpoint``.

    The node stops trying to join; it stays unjoined.
    """

    worker_id: str
    holder_endpoint: str
    holder_rank: int


@dataclass(frozen=True, slots=True)
class DuplicateRefused:
    """A process at ``joiner_endpoint`` (rank ``joiner_rank``) asked to join with the id
    ``worker_id``, which another live worker (this one, or ``holder``) holds; it was refused."""

    worker_id: str
    joiner_endpoint: str
    joiner_rank: int
    holder_endpoint: str


@dataclass(frozen=True, slots=True)
class CommandUpdate:
    """What this node knows of a run-control command changed: it is new, its target was
    decided, or a worker's state moved. ``acked_step`` is the step this node acked (None:
    not acked, or the target is known)."""

    entry: CommandEntry
    states: tuple[CommandState, ...]
    acked_step: int | None


Event = (
    LeaderChanged | MemberJoined | WorkerLost | DeclaredDead | QuorumChanged | BarrierReleased | BarrierFailed
    | CommitDue | CheckpointCommitted | CheckpointAbandoned | WorkerIdTaken | DuplicateRefused | CommandUpdate
)
