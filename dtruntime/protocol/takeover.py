"""Take-over agreement: survivors of an epoch settle who is lost and how far each lost one got.

A sans-IO state machine (:class:`TakeOverRounds`), one per survivor and take-over. It says
which agreement barrier to arrive at next and with what value (:meth:`~TakeOverRounds.propose`),
and learns from each release (:meth:`~TakeOverRounds.on_result`) until it has a
:class:`TakeOverDecision`. The driver (``DatasetRegistry.take_over``, or the simulator)
does the arriving and the waiting; this module does no IO and reads no clock: the driver
passes ``now`` and waits until :attr:`~TakeOverRounds.not_before` before the next round.

Two phases, each a run of agreement rounds; a round is one agreement barrier (every
survivor arrives with a value; the release names the lowest-ranked survivor's value and
every survivor whose value differs, the same record at every survivor).

1. **Who is lost** (``dtruntime.lost:{key}:{round}``, elastic). Each survivor proposes the
   epoch's members missing from its live view, as ``{count}:{digest}``. The round decides
   when every value agreed and every epoch member the release excluded as dead is in the
   agreed set: a member that died during the round, unseen by the proposals, sends everyone
   to the next round together (the release carries the leader's verdicts, so every view
   has it by then). The decision depends on the release alone, never on a view read after
   it, so every survivor decides at the same round. An undecided round is followed by
   a pause of ``retry_pause`` (a gossip period) so the views can converge. Nobody lost:
   decided, no second phase. After ``lost_rounds`` undecided rounds: :class:`DatasetError`.
2. **How far each lost member got** (``dtruntime.takeover:{chunk}:{round}``, not
   elastic: a survivor lost now fails every survivor's wait alike). The lost members are
   taken in chunks of :data:`CURSORS_PER_ROUND`; each survivor proposes the epoch
   membership's fingerprint and the chunk's cursors as it heard them by gossip; a survivor
   whose value differs takes the element-wise maximum with the two values the release
   shows. Every vector is then a join (maximum) of initial vectors; after the first round
   each differing one is above the reference, so the reference grows at every round and a
   chunk agrees within ``survivors + 2`` rounds (else :class:`DatasetError`). A release
   showing another membership fingerprint (a survivor started the epoch with another
   membership) is a :class:`DatasetError`: take-over could not be exact.

Invariant: survivors that reach a decision reach the same one (same lost members, same
cursors), because every step depends only on the epoch's membership and on release records
every survivor receives identically. A survivor's cursors are never below what it heard.

Edge cases: a survivor that is not a member of the epoch (its ``get_assignment`` was for
another rank) raises once the lost set is agreed non-empty; a peer's unreadable value is a
:class:`DatasetError`, never a crash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import DatasetError
from .spec_check import SpecAgreement

__all__ = ["AgreementResult", "Round", "TakeOverDecision", "TakeOverRounds"]

CURSORS_PER_ROUND = 40  # 40 cursors of up to 19 digits fit a 1024-character barrier value
LOST_ROUNDS = 50  # rounds of "who is lost" before giving up (views settle within a few heartbeats)


class AgreementResult(SpecAgreement, Protocol):
    """What an agreement barrier's release tells every survivor (``dtruntime.Agreement`` and
    the protocol's ``BarrierReleased`` event are both one): the spec check's fields and
    the members excluded as dead."""

    @property
    def excluded(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Round:
    """Arrive at agreement barrier ``barrier_id`` with ``value`` (elastic or not)."""

    barrier_id: str
    value: str
    elastic: bool


@dataclass(frozen=True, slots=True)
class TakeOverDecision:
    """What every survivor agreed: the lost members (sorted), the survivors in the epoch's
    order, and ``cursors[i]``, how many samples of its epoch stream ``lost[i]`` is credited
    with (empty when nobody is lost)."""

    lost: tuple[str, ...]
    survivors: tuple[str, ...]
    cursors: tuple[int, ...] = ()

    @property
    def credited(self) -> dict[str, int]:
        """Each lost member's cursor, by id."""
        return dict(zip(self.lost, self.cursors))


class TakeOverRounds:
    """One survivor's side of a take-over agreement (see the module docstring).

    ``key`` names the dataset's epoch (``<dataset>@<epoch>``, at most 200 characters so
    the barrier ids fit); ``epoch_members`` is the membership the epoch started with, in
    the same order on every survivor; ``me`` is this survivor's id.
    """

    def __init__(
        self, key: str, epoch_members: Sequence[str], me: str, *, retry_pause: float, lost_rounds: int = LOST_ROUNDS
    ) -> None:
        self.key = key
        self.epoch_members = tuple(epoch_members)
        self.me = me
        self.retry_pause = retry_pause
        self.lost_rounds = lost_rounds
        self.not_before = float("-inf")  # the driver waits until then before the next round
        self.decision: TakeOverDecision | None = None
        self._round = 0  # within the current phase (lost) or chunk (cursors)
        self._proposed_lost: tuple[str, ...] = ()
        self._lost: tuple[str, ...] | None = None  # agreed
        self._cursors: dict[str, int] = {}
        self._chunk_start = 0
        self._fingerprint = hashlib.blake2b(",".join(self.epoch_members).encode("utf-8"), digest_size=6).hexdigest()

    def propose(self, live: Collection[str], heard: Mapping[str, int]) -> Round:
        """The next round to arrive at, given this worker's live member ids and the
        cursors it heard by gossip (read once, when the cursor phase begins)."""
        if self.decision is not None:
            raise DatasetError(f"{self.key}: the take-over is already decided")
        if self._lost is None:
            lost = tuple(sorted(m for m in self.epoch_members if m not in live))
            self._proposed_lost = lost
            digest = hashlib.blake2b("\n".join(lost).encode("utf-8"), digest_size=8).hexdigest()
            return Round(f"dtruntime.lost:{self.key}:{self._round}", f"{len(lost)}:{digest}", True)
        if not self._cursors:
            self._cursors = {member: heard.get(member, 0) for member in self._lost}
        chunk = self._chunk()
        chunk_id = hashlib.blake2b("\n".join([self.key, *chunk]).encode("utf-8"), digest_size=8).hexdigest()
        value = self._fingerprint + ":" + ",".join(str(self._cursors[m]) for m in chunk)
        return Round(f"dtruntime.takeover:{chunk_id}:{self._round}", value, False)

    def on_result(self, result: AgreementResult, now: float) -> None:
        """Learn the release of the round last proposed; ``now`` dates the retry pause."""
        if self.decision is not None:
            return
        if self._lost is None:
            self._on_lost_result(result, now)
        else:
            self._on_cursor_result(result)

    # -- phase 1: who is lost ------------------------------------------------------------

    def _on_lost_result(self, result: AgreementResult, now: float) -> None:
        lost = self._proposed_lost
        unseen = [m for m in result.excluded if m in self.epoch_members and m not in lost]
        if not result.differing and not unseen:
            self._agree_lost(lost)
            return
        self._round += 1
        if self._round >= self.lost_rounds:
            raise DatasetError(f"{self.key}: the workers did not agree on who is lost in {self.lost_rounds} rounds")
        self.not_before = now + self.retry_pause

    def _agree_lost(self, lost: tuple[str, ...]) -> None:
        survivors = tuple(m for m in self.epoch_members if m not in lost)
        if not lost:
            self.decision = TakeOverDecision((), survivors)
            return
        if self.me not in survivors:
            raise DatasetError(f"this worker ({self.me}) was not a member of epoch {self.key} (dataset@epoch)")
        self._lost, self._round, self.not_before = lost, 0, float("-inf")

    # -- phase 2: the lost members' cursors ------------------------------------------------

    def _chunk(self) -> tuple[str, ...]:
        assert self._lost is not None
        return self._lost[self._chunk_start : self._chunk_start + CURSORS_PER_ROUND]

    def _on_cursor_result(self, result: AgreementResult) -> None:
        assert self._lost is not None
        chunk = self._chunk()
        if not result.differing:
            self._chunk_start += CURSORS_PER_ROUND
            self._round = 0
            if self._chunk_start >= len(self._lost):
                survivors = tuple(m for m in self.epoch_members if m not in self._lost)
                self.decision = TakeOverDecision(self._lost, survivors, tuple(self._cursors[m] for m in self._lost))
            return
        for seen in (result.reference_value, result.differing_value):
            for member, value in zip(chunk, self._parse(seen, len(chunk))):
                self._cursors[member] = max(self._cursors[member], value)
        self._round += 1
        limit = len(self.epoch_members) - len(self._lost) + 2
        if self._round >= limit:
            raise DatasetError(f"survivors did not settle the cursors of {list(chunk)} in {limit} rounds")

    def _parse(self, seen: str, count: int) -> list[int]:
        fingerprint, _, values = seen.partition(":")
        if fingerprint != self._fingerprint:
            raise DatasetError(
                f"{self.key}: the survivors started this epoch with different memberships (a worker "
                "called get_assignment after a loss); take-over cannot be exact"
            )
        parts = values.split(",")
        if len(parts) != count or not all(p.isascii() and p.isdigit() for p in parts):
            raise DatasetError(f"{self.key}: a survivor sent unreadable cursors {seen[:80]!r}")
        return [int(p) for p in parts]
