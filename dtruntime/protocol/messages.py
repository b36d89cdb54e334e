"""Wire messages of the control plane: one frozen, slotted dataclass per message type.

Fields are annotated with ``Annotated[..., Kind]`` metadata that the codec turns into
validation rules (worker ids, endpoints, barrier ids, bounded integers and tuples).
Every message names its ``sender`` (a worker id); replies go to the sender's endpoint
as recorded in the membership view, except ``Members`` which answers a ``Join`` at the
endpoint the joiner announced.

Adding a message: add a ``MsgType`` member, a dataclass, and a ``MESSAGE_TYPES`` entry;
the codec and its property tests pick it up from there.
"""

from __future__ import annotations

from ..errors import ProtocolError

import dataclasses
from enum import Enum, IntEnum
from typing import Annotated, TypeVar

_T = TypeVar("_T")


def wire(cls: type[_T]) -> type[_T]:
    """``@dataclass(frozen=True, slots=True)`` with a faster ``__init__``.

    A frozen dataclass's generated ``__init__`` sets every field through
    ``object.__setattr__``; messages are built for every probe, so that cost shows up
    in large simulations and in the driver. This one fills the slots through their
    descriptors: the same immutable object with the same defaults, built about twice as
    fast. Wire classes have no ``__post_init__`` and no default factories (the codec's
    checks are their validation); both are refused here.
    """
    cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
    if hasattr(cls, "__post_init__"):
        raise ProtocolError(f"{cls.__name__}: wire classes have no __post_init__")
    env: dict[str, object] = {}
    params, lines = [], []
    for spec in dataclasses.fields(cls):
        if spec.default_factory is not dataclasses.MISSING:
            raise ProtocolError(f"{cls.__name__}.{spec.name}: wire classes have no default factories")
        if spec.default is dataclasses.MISSING:
            params.append(spec.name)
        else:
            env[f"default_{spec.name}"] = spec.default
            params.append(f"{spec.name}=default_{spec.name}")
        env[f"set_{spec.name}"] = cls.__dict__[spec.name].__set__
        lines.append(f"    set_{spec.name}(self, {spec.name})")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(lines or ["    pass"])
    exec(compile(source, f"<dtruntime wire: {cls.__name__}.__init__>", "exec"), env)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__name__}.__init__"  # type: ignore[attr-defined]
    cls.__init__ = init  # type: ignore[misc]
    return cls


class Kind(Enum):
    """Validation rule for a string field."""

    WORKER_ID = "worker_id"  # validated worker id, never empty
    OPT_WORKER_ID = "opt_worker_id"  # validated worker id or "" for none
    ENDPOINT = "endpoint"  # transport address, e.g. tcp://10.0.0.1:50051 or sim://w3
    BARRIER_ID = "barrier_id"  # printable text chosen by the user
    CODEC = "codec"  # a compression codec name: 1-16 lowercase letters and digits
    BARRIER_VALUE = "barrier_value"  # printable text, at most 1024 characters, may be empty


WorkerId = Annotated[str, Kind.WORKER_ID]
OptWorkerId = Annotated[str, Kind.OPT_WORKER_ID]
Endpoint = Annotated[str, Kind.ENDPOINT]
BarrierId = Annotated[str, Kind.BARRIER_ID]
CodecName = Annotated[str, Kind.CODEC]
BarrierValue = Annotated[str, Kind.BARRIER_VALUE]


class MsgType(IntEnum):
    """Wire tag of each message type. Values are part of the schema: never reuse one."""

    JOIN = 1
    MEMBERS = 2
    PING = 3
    ACK = 4
    PING_REQ = 5
    VOTE_REQUEST = 6
    VOTE = 7
    LEADER = 8
    ARRIVE = 9
    RELEASE = 10
    PART_DONE = 11
    STEP_RESULT = 12
    JOIN_REFUSED = 13
    BARRIER_PENDING = 14
    COMMANDS = 15
    COMMAND_ACK = 16


class Status(IntEnum):
    """Liveness of a member. Larger values win over smaller at the same incarnation."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3  # left on purpose (close()); final for that incarnation, like DEAD


class Outcome(IntEnum):
    """How a barrier ended."""

    RELEASED = 0  # every expected member arrived (elastic: every live one)
    LOST = 1  # an expected member was declared dead
    TIMEOUT = 2  # the barrier's timeout passed first


class CommitOutcome(IntEnum):
    """How a checkpoint step ended."""

    COMMITTED = 0  # the manifest exists: every rank's part is in the checkpoint
    ABANDONED = 1  # a rank's part is missing (its rank was lost or its write failed)
    FAILED = 2  # every part is there, but the leader could not write the manifest


@wire
class MemberEntry:
    """One worker as the membership protocol knows it.

    ``(incarnation, status)`` orders entries of the same worker: a higher incarnation
    wins; at equal incarnation the larger status wins (ALIVE < SUSPECT < DEAD < LEFT).
    Only the worker itself raises its incarnation, to refute a suspicion or to rejoin.
    """

    worker_id: WorkerId
    rank: int
    local_rank: int
    incarnation: int
    status: Status
    endpoint: Endpoint
    gpu_count: int = 0
    memory_bytes: int = 0
    worker_port: int = 0  # the original API's register_worker(port=...): advertised, never bound here

    def precedence(self) -> tuple[int, int]:
        return (self.incarnation, int(self.status))

    @property
    def is_live(self) -> bool:
        """ALIVE or SUSPECT: not (yet) declared dead or gone."""
        return self.status <= Status.SUSPECT


@wire
class ProgressEntry:
    """Worker ``worker_id``'s counter ``key`` (only grows; see ``protocol.progress``)."""

    worker_id: WorkerId
    key: BarrierId
    value: int


@wire
class CommandEntry:
    """A run-control command (see ``protocol.commands``), as every node knows it.

    ``args`` is JSON text chosen by the local API. ``agree_step``: every rank acts at the
    same step, ``target`` (0 until the leader decided it); without it each rank acts at
    its next step boundary. ``cancelled``: ranks that learn it before acting skip it.
    Entries of one command merge by taking the larger ``target`` and ``cancelled`` if either.
    """

    command_id: BarrierId
    name: BarrierId
    args: BarrierValue
    submitted_by: WorkerId
    submitted_at_ms: int
    agree_step: bool
    target: int = 0
    cancelled: bool = False


@wire
class CommandState:
    """Worker ``worker_id`` (rank ``rank``)'s progress on command ``command_id``.

    ``state`` only grows: 0 pending, 1 running, 2 done, 3 failed (done and failed are final).
    """

    worker_id: WorkerId
    command_id: BarrierId
    rank: int
    state: int


@wire
class Gossip:
    """What every probe message piggybacks: the sender's leader belief and news."""

    leader_term: int
    leader_id: OptWorkerId
    members: tuple[MemberEntry, ...]
    progress: tuple[ProgressEntry, ...] = ()
    commands: tuple[CommandEntry, ...] = ()
    command_states: tuple[CommandState, ...] = ()


@wire
class BarrierResult:
    """The decided outcome of one barrier generation.

    ``workers`` names the lost members (LOST), the members released without because
    they were dead (RELEASED), or those who had not arrived (TIMEOUT).

    A RELEASED result also compares the values the members arrived with (an agreement,
    see ``Arrive.value``): ``reference`` is the lowest-ranked arrived member and
    ``reference_value`` its value; ``differing`` names every arrived member whose value
    differs from it (empty: all agree) and ``differing_value`` is the first one's value.

    ``verdicts`` are the deciding leader's entries (DEAD or LEFT) of the named workers
    that were gone (LOST, or RELEASED without them). A receiver merges them into its view
    like gossip before it ends the wait, so a worker whose barrier failed naming W does
    not list W among its live members afterwards.
    """

    barrier_id: BarrierId
    generation: int
    outcome: Outcome
    elastic: bool
    workers: tuple[WorkerId, ...]
    reference: OptWorkerId = ""
    reference_value: BarrierValue = ""
    differing: tuple[WorkerId, ...] = ()
    differing_value: BarrierValue = ""
    verdicts: tuple[MemberEntry, ...] = ()


@wire
class Join:
    """A worker asks any member for the view; ``member`` is its own entry."""

    sender: WorkerId
    member: MemberEntry


@wire
class JoinRefused:
    """The answer to a ``Join`` whose worker id is already taken by another live worker.

    ``holder_endpoint`` and ``holder_rank`` say who holds it. Sent to the endpoint the
    joiner announced; a node that has not joined yet stops trying when it gets one.
    """

    sender: WorkerId
    worker_id: WorkerId
    holder_endpoint: Endpoint
    holder_rank: int


@wire
class Members:
    """A full view: the answer to ``Join``, and the broadcast when the world is complete."""

    sender: WorkerId
    leader_term: int
    leader_id: OptWorkerId
    members: tuple[MemberEntry, ...]


@wire
class Ping:
    sender: WorkerId
    seq: int
    gossip: Gossip


@wire
class Ack:
    """Confirms that ``target`` answered probe ``seq`` (``target != sender`` when relayed)."""

    sender: WorkerId
    seq: int
    target: WorkerId
    gossip: Gossip


@wire
class PingReq:
    """Asks ``sender``'s helper to probe ``target`` and relay the ``Ack``."""

    sender: WorkerId
    seq: int
    target: WorkerId
    target_endpoint: Endpoint
    gossip: Gossip


@wire
class VoteRequest:
    sender: WorkerId
    term: int


@wire
class Vote:
    sender: WorkerId
    term: int
    granted: bool


@wire
class Leader:
    """``sender`` won the election for ``term``."""

    sender: WorkerId
    term: int


@wire
class Arrive:
    """``sender`` (at ``incarnation``) waits at a barrier generation.

    ``timeout_ms`` of 0 means no timeout; ``waited_ms`` is how long the sender has been
    waiting, so a new leader can date the barrier's opening. ``value`` is what the
    sender asks the others to agree on ("" for a plain barrier); the release says who
    differs. Re-sent until a ``Release`` arrives.
    """

    sender: WorkerId
    incarnation: int
    barrier_id: BarrierId
    generation: int
    elastic: bool
    timeout_ms: int
    waited_ms: int = 0
    value: BarrierValue = ""


@wire
class Release:
    """A barrier's outcome: leader to waiters, or a follower telling a new leader."""

    sender: WorkerId
    result: BarrierResult


@wire
class PartDone:
    """``sender`` (rank ``rank`` at ``incarnation``) finished its part of checkpoint ``step``.

    ``ok``: the part is durable at the key that ``(step, rank, codec, checksum)`` names,
    with ``size`` bytes; ``ok=False``: writing it failed, so the step cannot complete.
    Sent to the leader, re-sent periodically and to every new leader until a
    ``StepResult`` for the step arrives.
    """

    sender: WorkerId
    incarnation: int
    step: int
    rank: int
    size: int
    checksum: int
    codec: CodecName
    ok: bool


@wire
class StepResult:
    """How checkpoint ``step`` ended: leader to ranks, or a rank telling a new leader.

    ``missing_ranks`` names the ranks whose part was missing (ABANDONED).
    """

    sender: WorkerId
    step: int
    outcome: CommitOutcome
    missing_ranks: tuple[int, ...]


@wire
class BarrierPending:
    """The leader's answer to a re-sent ``Arrive``: barrier generation still open,
    ``missing`` have not arrived yet (for the waiter's "still waiting" log)."""

    sender: WorkerId
    barrier_id: BarrierId
    generation: int
    missing: tuple[WorkerId, ...]


@wire
class Commands:
    """Run-control commands (and states) sent straight to a member, next to the gossip."""

    sender: WorkerId
    commands: tuple[CommandEntry, ...]
    states: tuple[CommandState, ...] = ()


@wire
class CommandAck:
    """``sender`` holds command ``command_id``; its last published step was ``step``.

    Sent to the leader, re-sent until the target is known.
    """

    sender: WorkerId
    command_id: BarrierId
    step: int


Message = (
    Join | Members | Ping | Ack | PingReq | VoteRequest | Vote | Leader | Arrive | Release | PartDone | StepResult
    | JoinRefused | BarrierPending | Commands | CommandAck
)

MESSAGE_TYPES: dict[MsgType, type] = {
    MsgType.JOIN: Join,
    MsgType.MEMBERS: Members,
    MsgType.PING: Ping,
    MsgType.ACK: Ack,
    MsgType.PING_REQ: PingReq,
    MsgType.VOTE_REQUEST: VoteRequest,
    MsgType.VOTE: Vote,
    MsgType.LEADER: Leader,
    MsgType.ARRIVE: Arrive,
    MsgType.RELEASE: Release,
    MsgType.PART_DONE: PartDone,
    MsgType.STEP_RESULT: StepResult,
    MsgType.JOIN_REFUSED: JoinRefused,
    MsgType.BARRIER_PENDING: BarrierPending,
    MsgType.COMMANDS: Commands,
    MsgType.COMMAND_ACK: CommandAck,
}
TYPE_OF_CLASS: dict[type, MsgType] = {cls: tag for tag, cls in MESSAGE_TYPES.items()}
