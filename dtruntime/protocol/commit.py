"""Multi-rank checkpoint commit: the leader's bookkeeping (:class:`CommitBook`) and each rank's (:class:`Saves`).

Each rank writes its own part straight to storage, then reports it (``PartDone``) to the
leader. Storage is the source of truth, the messages only say when to look: the leader's
book asks its local API to decide a step (``CommitDue``) once, per leadership, when

* every rank ``0..world_size-1`` reported its part (``missing_ranks`` empty), or
* a rank that has not reported can no longer report: its member was declared DEAD or
  LEFT (and no live member holds the rank), or its report says the write failed; or
  every rank that has not reported has reported a *later* step. Each rank saves its steps in increasing order (retention
  relies on that too), so a rank that reported step 20 but not 18 either wrote 18
  before (its report was lost or is still being re-sent: the part is in storage, and the
  decision from storage commits it) or never will (it crashed and restarted, faster
  than the failure detector declared it dead, and resumed past 18). Without this rule
  a rank restarted within ``heartbeat_timeout`` left every step it had not reported
  open forever.

The API decides from storage alone (manifest there: COMMITTED; every part there: write
the create-only manifest, COMMITTED, or FAILED if it cannot; otherwise ABANDONED) and
answers with ``Node.commit_resolved``. Because the decision rests on storage, a new
leader, a rank lost after writing its part, or two leaders writing the same manifest
all end the same way. The book never decides by itself: a step whose ``CommitDue`` is
out waits for the answer, so nothing is abandoned while its manifest may be written.

Leader rules (``CommitBook``): a report counts only from a live member holding that
rank, at its current incarnation (for one rank the report of the highest incarnation
wins; at equal incarnation the first). A decided step is remembered (bounded history)
and re-sent to any late or repeated report. Open steps are forgotten on losing
leadership; decided ones are kept. A new leader learns results from ranks' reports of
recent results, and from its API's scan of storage.

Rank rules (``Saves``): report once per step; re-send every ``resend_periods`` and to
every new leader until a ``StepResult`` arrives; a result is reported as an event once.

Invariant (checked by the simulator): a rank sees ``CheckpointCommitted(step)`` only
after every rank of the world reported its part of ``step``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import ProtocolError
from .events import CheckpointAbandoned, CheckpointCommitted, CommitDue
from .membership import Membership
from .messages import CommitOutcome, PartDone, StepResult
from .outbox import Outbox
from .settings import ProtocolSettings

RECENT_RESULTS = 16  # results a rank reports to a new leader


@dataclass(slots=True)
class _OpenStep:
    reports: dict[int, PartDone] = field(default_factory=dict)  # rank -> report
    reporters: dict[str, None] = field(default_factory=dict)  # insertion-ordered worker ids
    due: bool = False  # CommitDue emitted; waiting for the API's answer


@dataclass(frozen=True, slots=True)
class CommitDecision:
    """A step's result to send to the workers that reported to it."""

    result: StepResult
    reporters: tuple[str, ...]


class CommitBook:
    """Leader-side state of every checkpoint step being committed."""

    # Slotted: every node has one, and a simulation touches 10,000 of them in turn.
    __slots__ = ("worker_id", "world_size", "settings", "_out", "_open", "_decided", "_latest", "decisions")

    def __init__(self, worker_id: str, world_size: int, settings: ProtocolSettings, outbox: Outbox) -> None:
        self.worker_id = worker_id
        self.world_size = world_size
        self.settings = settings
        self._out = outbox
        self._open: dict[int, _OpenStep] = {}
        self._decided: OrderedDict[int, StepResult] = OrderedDict()
        self._latest: dict[int, int] = {}  # rank -> the highest step it reported (one entry a rank)
        self.decisions: list[CommitDecision] = []  # drained by the node

    def decided(self, step: int) -> StepResult | None:
        return self._decided.get(step)

    def report(self, report: PartDone, view: Membership) -> StepResult | None:
        """Record ``report``; return the step's result at once if it is already decided."""
        result = self._decided.get(report.step)
        if result is not None:
            return result
        member = view.get(report.sender)
        if (
            member is None
            or not member.is_live
            or member.rank != report.rank
            or report.incarnation < member.incarnation
            or not 0 <= report.rank < self.world_size
        ):
            return None  # stale or misdirected: a live successor re-sends
        step = self._open.setdefault(report.step, _OpenStep())
        previous = step.reports.get(report.rank)
        if previous is None or report.incarnation > previous.incarnation:
            step.reports[report.rank] = report
        step.reporters[report.sender] = None
        self._evaluate(report.step, step, view)
        if report.step > self._latest.get(report.rank, -1):
            self._latest[report.rank] = report.step
            for number, earlier in list(self._open.items()):
                if number < report.step and report.rank not in earlier.reports:
                    self._evaluate(number, earlier, view)
        return None

    def open_steps(self) -> list[int]:
        """Steps some rank reported that are not decided yet."""
        return list(self._open)

    def decided_results(self) -> list[StepResult]:
        """The remembered decisions (bounded history), oldest first."""
        return list(self._decided.values())

    def on_view_change(self, view: Membership) -> None:
        for number, step in list(self._open.items()):
            self._evaluate(number, step, view)

    def resolve(self, step: int, outcome: CommitOutcome, missing_ranks: tuple[int, ...]) -> None:
        """The API's decision (from storage) for ``step``; the first decision stands."""
        self.learn(StepResult(self.worker_id, step, outcome, tuple(sorted(set(missing_ranks)))))

    def learn(self, result: StepResult) -> None:
        """Adopt a decision: the API's, or one an earlier leader made (reported by a rank)."""
        if result.step in self._decided:
            return
        open_step = self._open.pop(result.step, None)
        self._decided[result.step] = result
        while len(self._decided) > self.settings.commit_history:
            self._decided.popitem(last=False)
        reporters = tuple(open_step.reporters) if open_step is not None else ()
        self.decisions.append(CommitDecision(result, reporters))

    def clear_open(self) -> None:
        """Forget open steps (on losing leadership); ranks re-send to the next leader."""
        self._open.clear()

    def _evaluate(self, number: int, step: _OpenStep, view: Membership) -> None:
        if step.due:
            return
        failed = [rank for rank, report in step.reports.items() if not report.ok]
        unreported = [rank for rank in range(self.world_size) if rank not in step.reports]
        lost = [rank for rank in unreported if _rank_lost(rank, view)]
        latest = self._latest
        moved_on = [rank for rank in unreported if rank not in lost and latest.get(rank, -1) > number]
        if len(moved_on) < len(unreported) - len(lost) and not (failed or lost):
            return  # a rank may still report (one that moved on only ends the wait once all others did)
        step.due = True
        reports = tuple(step.reports[rank] for rank in sorted(step.reports))
        self._out.emit(CommitDue(number, reports, tuple(sorted(failed + lost + moved_on))))


def _rank_lost(rank: int, view: Membership) -> bool:
    """A member held ``rank`` and none that holds it now is live (not yet joined: not lost)."""
    holders = [entry for entry in view.members.values() if entry.rank == rank]
    return bool(holders) and not any(entry.is_live for entry in holders)


class Saves:
    """This rank's reported parts that wait for their step's result."""

    # Slotted: every node has one, and a simulation touches 10,000 of them in turn.
    __slots__ = ("worker_id", "settings", "_out", "_pending", "recent", "next_resend")

    def __init__(self, worker_id: str, settings: ProtocolSettings, outbox: Outbox) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self._out = outbox
        self._pending: dict[int, PartDone] = {}
        self.recent: OrderedDict[int, StepResult] = OrderedDict()
        self.next_resend = float("inf")

    def __bool__(self) -> bool:
        return bool(self._pending)

    def start(self, report: PartDone, now: float) -> None:
        if report.step in self._pending:
            raise ProtocolError(f"checkpoint step {report.step} is already waiting for its commit")
        self.recent.pop(report.step, None)  # a retry; the leader answers from its history
        self._pending[report.step] = report
        self.next_resend = min(self.next_resend, now + self.settings.resend_periods * self.settings.probe_period)

    def pending_steps(self) -> list[int]:
        """Steps this rank reported whose result has not arrived."""
        return list(self._pending)

    def reports(self, incarnation: int) -> list[PartDone]:
        """Pending reports, at this worker's current incarnation, in step order."""
        return [_at(report, incarnation) for _, report in sorted(self._pending.items())]

    def resend_due(self, now: float) -> bool:
        if not self._pending or now < self.next_resend:
            return False
        self.next_resend = now + self.settings.resend_periods * self.settings.probe_period
        return True

    def on_result(self, result: StepResult) -> None:
        """Finish the matching pending step, if any; duplicates and strangers are ignored."""
        if self._pending.pop(result.step, None) is None:
            return
        if not self._pending:
            self.next_resend = float("inf")
        self.recent[result.step] = result
        while len(self.recent) > RECENT_RESULTS:
            self.recent.popitem(last=False)
        if result.outcome == CommitOutcome.COMMITTED:
            self._out.emit(CheckpointCommitted(result.step))
        else:
            self._out.emit(CheckpointAbandoned(result.step, result.outcome, result.missing_ranks))

    def fail_all(self, detail: str) -> None:
        for step in sorted(self._pending):
            self._out.emit(CheckpointAbandoned(step, CommitOutcome.ABANDONED, (), detail))
        self._pending.clear()
        self.next_resend = float("inf")

    def next_deadline(self) -> float:
        return self.next_resend


def _at(report: PartDone, incarnation: int) -> PartDone:
    if report.incarnation == incarnation:
        return report
    return PartDone(
        report.sender, incarnation, report.step, report.rank, report.size, report.checksum, report.codec, report.ok
    )
